"""Shared fixtures: FER2013 (or generated faces when it is absent) and a small model that the
project's own `train` and `convert` verbs really train and convert, once per session."""
from __future__ import annotations

import fcntl
import tracemalloc  # noqa: F401  (see below)
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fer_edge.cli import main
from fer_edge.spec import CLASS_NAMES, INPUT_SIZE
from fer_edge.train.data import default_data_path

# pytest's unraisable-exception hook imports tracemalloc lazily; when LiteRT's Delegate.__del__
# fires during that very import (a GC pass), the hook re-enters a half-imported module and fails a
# random test. Importing it up front removes the race.
REPO = Path(__file__).resolve().parents[1]
FER2013 = default_data_path()
SMALL_MODEL_ARGS = ["--widths", "16,32,32,64", "--blocks", "1,1,1,1", "--lr", "3e-3", "--warmup-epochs", "0",
                    "--rotation", "0", "--zoom", "0", "--shift", "0", "--train-limit", "6000", "--val-limit", "600"]


def run_cli(*args: str, expect: int = 0):
    """Run a `fer-edge` verb in-process and assert its exit status."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, f"fer-edge {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}"
    return result


def generated_faces(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable stand-ins for faces: each class is a bright blob at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:INPUT_SIZE, :INPUT_SIZE]
    images, labels = [], []
    for label in range(len(CLASS_NAMES)):
        angle = 2 * np.pi * label / len(CLASS_NAMES)
        cy, cx = 24 + 13 * np.sin(angle), 24 + 13 * np.cos(angle)
        blob = 160 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
        for _ in range(n_per_class):
            noise = rng.normal(60, 25, (INPUT_SIZE, INPUT_SIZE))
            images.append(np.clip(blob + noise, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels, np.uint8)


def write_generated_npz(path: Path, n_per_class: int = 120) -> Path:
    images, labels = generated_faces(n_per_class)
    usage = np.array(["Training", "Training", "Training", "PublicTest", "PrivateTest"] * (len(labels) // 5 + 1))[:len(labels)]
    np.savez(path, images=images, labels=labels, usage=usage)
    return path


@pytest.fixture(scope="session")
def fer2013():
    if not FER2013.exists():
        pytest.skip(f"FER2013 not found at {FER2013} (set FER_EDGE_DATA)")
    from fer_edge.train.data import load_dataset

    return load_dataset(FER2013)


@pytest.fixture(scope="session")
def data_path(tmp_path_factory) -> Path:
    """FER2013 where present, else generated faces, so the model fixtures always run."""
    if FER2013.exists():
        return FER2013
    return write_generated_npz(tmp_path_factory.mktemp("generated") / "faces.npz")


def shared_folder(tmp_path_factory, worker_id: str) -> Path:
    """This session's folder that every pytest-xdist worker shares (xdist: .../pytest-N/popen-gwK's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if worker_id != "master" else base


@contextmanager
def locked(path: Path):
    """Hold a lock named after `path` while the caller makes it if it is not there yet: the small
    model trains and converts once a session, not once a worker (each costs minutes of CPU the
    other worker needs)."""
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, data_path, worker_id) -> Path:
    with locked(shared_folder(tmp_path_factory, worker_id) / "small") as run:
        if not (run / "final_metrics.json").exists():
            run_cli("train", "--data", data_path, *SMALL_MODEL_ARGS, "--epochs", "3", "--out", run)
    return run


@pytest.fixture(scope="session")
def float_tflite_path(small_run) -> Path:
    with locked(small_run / "model_float32.tflite") as out:
        if not out.exists():
            run_cli("convert", small_run, "--float", "--out", out)
    return out


@pytest.fixture(scope="session")
def int8_model_path(small_run, data_path) -> Path:
    with locked(small_run / "model_int8.tflite") as out:
        if not out.exists():
            run_cli("convert", small_run, "--int8", "--data", data_path, "--calibration", "500", "--out", out)
    return out
