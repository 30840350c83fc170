"""Soft training targets from teachers: finished runs or models (knowledge distillation), or FER+ votes.

A run started with `--teacher` trains on `(1 - w) * its one-hot label + w * the teachers' mean
probabilities` for each training image (w = `--distill`). The teachers' probabilities are computed
once, when the run starts, with flip averaging (the teachers' best single-model view), and kept in
the run folder, so a resumed run trains on the same targets without the teachers at hand. A QAT
run (`--qat --from RUN`) trains on its float run's targets, read from that run's folder: the 8-bit
fine-tune keeps the loss the float weights were shaped by.

`--teacher ferplus` uses FER+'s crowd vote shares as a teacher: ten annotators' view of each image,
which spreads FER2013's single label over the emotions they saw. Images without FER+ votes keep
their FER2013 label there.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.errors import FerEdgeError
from fer_edge.spec import NUM_CLASSES
from fer_edge.train import run as runs
from fer_edge.train.data import FerDataset

FERPLUS = "ferplus"


def check_teachers(teachers: list[str]) -> None:
    """Refuse, before any data loads, a teacher that is neither `ferplus` nor an existing model or run."""
    for teacher in teachers:
        if teacher != FERPLUS and not Path(teacher).exists():
            raise FerEdgeError(f"--teacher: {teacher} does not exist (give a finished run folder, a .h5/.keras "
                               f"model, a .tflite file, or '{FERPLUS}')")


def ferplus_targets(ds: FerDataset, indices: np.ndarray) -> np.ndarray:
    from fer_edge.train.ferplus import distributions

    if ds.ferplus_votes is None:
        raise FerEdgeError(f"--teacher {FERPLUS}: {ds.source} has no ferplus_votes")
    shares, voted = distributions(ds.ferplus_votes[indices])
    onehot = np.eye(NUM_CLASSES)[ds.labels[indices]]
    return np.where(voted[:, None], shares, onehot)


def model_targets(teacher: str, ds: FerDataset, indices: np.ndarray) -> np.ndarray:
    from fer_edge.train.evaluate import load_predictor, predict_probs

    return predict_probs(load_predictor(teacher, tta_flip=True), ds.images[indices]).astype(np.float64)


def teacher_targets(run: Path, teachers: list[str], ds: FerDataset, indices: np.ndarray,
                    float_run: str | Path | None = None) -> np.ndarray:
    """The teachers' mean probabilities over the training images `indices`, computed on the run's
    first start (or taken from `float_run`'s folder, for a QAT run) and read back on every resume."""
    path = Path(run) / runs.TEACHER_TARGETS
    if path.exists():
        return _read(path, teachers, indices)
    inherited = Path(float_run) / runs.TEACHER_TARGETS if float_run is not None else None
    if inherited is not None and inherited.exists():
        probs = _read(inherited, teachers, indices)
    else:
        probs = _compute(teachers, ds, indices)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, probs=probs, indices=indices, teachers=np.array(teachers))
    return probs


def _compute(teachers: list[str], ds: FerDataset, indices: np.ndarray) -> np.ndarray:
    check_teachers(teachers)
    total = np.zeros((len(indices), NUM_CLASSES))
    for n, teacher in enumerate(teachers, start=1):
        start = time.monotonic()
        print(f"teacher {n}/{len(teachers)}: {teacher} on {len(indices)} training images", file=sys.stderr, flush=True)
        total += ferplus_targets(ds, indices) if teacher == FERPLUS else model_targets(teacher, ds, indices)
        print(f"teacher {n}/{len(teachers)}: done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return (total / len(teachers)).astype(np.float32)


def _read(path: Path, teachers: list[str], indices: np.ndarray) -> np.ndarray:
    """The saved targets of the images `indices`: all of the saved images, or (a QAT run on a
    `--train-limit` subset) some of them."""
    try:
        with np.load(path) as saved:
            probs, saved_indices, saved_teachers = saved["probs"], saved["indices"], list(saved["teachers"])
    except (OSError, ValueError, KeyError) as exc:
        raise FerEdgeError(f"{path}: corrupt teacher targets ({runs.one_line(exc)}); delete it to recompute "
                           "them from the teachers") from None
    row_of = {int(i): row for row, i in enumerate(saved_indices)}
    rows = np.array([row_of.get(int(i), -1) for i in indices], dtype=np.int64)
    if saved_teachers != list(teachers) or probs.shape != (len(saved_indices), NUM_CLASSES) or (rows < 0).any():
        raise FerEdgeError(f"{path}: made for other teachers or training images than config.json names; delete it "
                           "to recompute them")
    return probs[rows]


def mix(onehot: np.ndarray, soft: np.ndarray, weight: float) -> np.ndarray:
    return ((1 - weight) * onehot + weight * soft).astype(np.float32)
