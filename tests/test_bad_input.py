"""The bad-input corpus: every hostile input a user can give a verb, run through the real CLI.

Each row builds its input in a fresh folder, runs `python -m fer_edge VERB ...` in a subprocess and
checks what the README promises: a non-zero exit, exactly one `Error:` line on stderr naming the
file, argument or key, no traceback, and nothing new or changed on disk. Verbs that would import
TensorFlow are kept to the few rows that need it (a run folder), the rest stay cheap.
"""
from __future__ import annotations

import ctypes.util
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import write_generated_npz
from fer_edge.atomic import atomic_path
from fer_edge.edge_runtime.classifier import SHIPPED_MODEL
from fer_edge.edge_runtime.commands import SAMPLE_IMAGE
from fer_edge.errors import FerEdgeError

PIXELS = " ".join(["128"] * 48 * 48)
# /sys refuses new files even to root, so "unwritable" is tested wherever the tests run as root.
UNWRITABLE = Path("/sys/fer-edge-test")
SYS_READ_ONLY = not os.access("/sys", os.W_OK) or os.geteuid() == 0


def cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_edge", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def tree(folder: Path) -> dict:
    """Every file under `folder` with its size and content hash: the state nothing may change."""
    return {str(p.relative_to(folder)): (p.stat().st_size, zlib.crc32(p.read_bytes()))
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(result: subprocess.CompletedProcess, names: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert names in result.stderr, f"{names!r} not named in:\n{result.stderr}"
    return errors[0]


# --- inputs ------------------------------------------------------------------------------------------

def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (its pixel data is tiny): costs nothing to make."""
    import cv2

    data = bytearray(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def npz(path: Path, images=None, labels=None, usage=None) -> Path:
    images = np.zeros((3, 48, 48), np.uint8) if images is None else images
    labels = np.array([0, 1, 2]) if labels is None else labels
    usage = np.array(["Training"] * 3) if usage is None else usage
    np.savez(path, images=images, labels=labels, usage=usage)
    return path


def truncated(source: Path, path: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def random_bytes(path: Path, n: int = 4096, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def run_folder(path: Path, config: bytes, weights: bytes) -> Path:
    path.mkdir()
    (path / "config.json").write_bytes(config)
    (path / "best_weights.h5").write_bytes(weights)
    return path


GOOD_RUN_CONFIG = b'{"model": "seresnet", "preset": "edge", "overrides": {"widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]}}'

# (id, builder(tmp) -> (args, text the Error line or stderr must name)).
# Builders get a fresh folder; every file they make exists before the verb runs.
CASES = {
    # data: the default .npz, the challenge CSV
    "npz-truncated": lambda t: (["data", "inspect", truncated(write_generated_npz(t / "g.npz", 5), t / "t.npz")], "t.npz"),
    "npz-empty": lambda t: (["data", "inspect", random_bytes(t / "e.npz", 0)], "e.npz"),
    "npz-random": lambda t: (["data", "inspect", random_bytes(t / "r.npz")], "r.npz"),
    "npz-is-npy": lambda t: (["data", "inspect", _npy_as_npz(t / "a.npz")], "a.npz"),
    "npz-label-out-of-range": lambda t: (["data", "inspect", npz(t / "l.npz", labels=np.array([0, -1, 2]))], "label -1"),
    "npz-label-wrong-type": lambda t: (["data", "inspect", npz(t / "f.npz", labels=np.array([0.0, 1, 2]))], "labels must be integers"),
    "npz-length-mismatch": lambda t: (["data", "inspect", npz(t / "m.npz", labels=np.array([0, 1]))], "2 labels"),
    "csv-latin1": lambda t: (["data", "inspect", _write(t / "l.csv", f"emotion,pixels,Usage\n0,{PIXELS},Trainé\n".encode("latin-1"))], "not UTF-8"),
    "csv-unterminated-quote": lambda t: (["data", "inspect", _write(t / "q.csv", f'emotion,pixels,Usage\n0,{PIXELS},Training\n0,"{PIXELS * 60}\n'.encode())], "q.csv, line 3"),
    "csv-empty": lambda t: (["data", "inspect", random_bytes(t / "e.csv", 0)], "e.csv"),
    "csv-random": lambda t: (["data", "inspect", random_bytes(t / "r.csv")], "r.csv"),
    "csv-bad-row": lambda t: (["data", "inspect", _write(t / "b.csv", b"emotion,pixels,Usage\n9,1 2 3,Training\n")], "row 2"),
    "data-missing": lambda t: (["data", "inspect", t / "nope.npz"], "nope.npz"),
    "npz-ferplus-votes-wrong-shape": lambda t: (["data", "inspect", _extra(npz(t / "v.npz"), ferplus_votes=np.ones((3, 7), int))],
                                                "v.npz: ferplus_votes must be integers of shape (3, 10)"),
    "npz-ferplus-votes-negative": lambda t: (["data", "inspect", _extra(npz(t / "v.npz"), ferplus_votes=-np.ones((3, 10), int))],
                                             "ferplus_votes must be vote counts >= 0"),
    "npz-dup-group-short": lambda t: (["data", "inspect", _extra(npz(t / "d.npz"), dup_group=np.arange(2))],
                                      "d.npz: dup_group must be integers of shape (3,)"),
    "npz-dup-group-float": lambda t: (["data", "inspect", _extra(npz(t / "d.npz"), dup_group=np.zeros(3))],
                                      "dup_group must be integers"),
    # inspect: the model loader
    "tflite-empty": lambda t: (["inspect", random_bytes(t / "e.tflite", 0)], "e.tflite"),
    "tflite-random": lambda t: (["inspect", random_bytes(t / "r.tflite")], "r.tflite"),
    "tflite-truncated": lambda t: (["inspect", truncated(SHIPPED_MODEL, t / "t.tflite", 0.3)], "t.tflite"),
    "tflite-is-text": lambda t: (["inspect", _write(t / "x.tflite", b"hello\n")], "x.tflite"),
    "inspect-folder": lambda t: (["inspect", _mkdir(t / "m.tflite")], "m.tflite: is a folder"),
    # convert: output paths are checked before anything is loaded
    "convert-out-under-a-file": lambda t: (["convert", _write(t / "m.keras", b"x"), "--float", "--out", _write(t / "f", b"") / "m.tflite"], "--out"),
    "convert-out-is-a-folder": lambda t: (["convert", _write(t / "m.keras", b"x"), "--float", "--out", _mkdir(t / "d")], "--out"),
    "benchmark-out-under-a-file": lambda t: (["benchmark", "m.tflite", "--out", _write(t / "f", b"") / "r.json"], "--out"),
    # evaluate
    "evaluate-out-under-a-file": lambda t: (["evaluate", "m.tflite", "--out", _write(t / "f", b"") / "eval"], "--out"),
    "evaluate-corrupt-tflite": lambda t: (["evaluate", random_bytes(t / "r.tflite"), "--data", write_generated_npz(t / "g.npz", 5)], "r.tflite"),
    "evaluate-limit-zero": lambda t: (["evaluate", "m.tflite", "--limit", "0"], "--limit"),
    "benchmark-limit-zero": lambda t: (["benchmark", "m.tflite", "--limit", "0"], "--limit"),
    "benchmark-invokes-negative": lambda t: (["benchmark", "m.tflite", "--invokes", "-1"], "--invokes"),
    "benchmark-budget-nan": lambda t: (["benchmark", "m.tflite", "--max-acc-drop", "nan"], "--max-acc-drop"),
    "benchmark-second-model-missing": lambda t: (["benchmark", SHIPPED_MODEL, t / "nope.tflite", "--invokes", "0",
                                                  "--data", write_generated_npz(t / "g.npz", 5)], "nope.tflite"),
    "evaluate-a-detector-file": lambda t: (["evaluate", SHIPPED_MODEL.parent.parent / "assets" / "detectors" / "face_detection_yunet.tflite",
                                            "--data", write_generated_npz(t / "g.npz", 5)], "is it an emotion model?"),
    "convert-weights-only-h5": lambda t: (["convert", _weights_only(t / "w.h5"), "--int8"], "w.h5: cannot load as a Keras model (weights only"),
    "predict-float32-tiff": lambda t: (["predict", _float_tiff(t / "f.tiff")], "f.tiff: OpenCV cannot decode"),
    # calibrate: its --out is checked before the model runs on two splits
    "calibrate-out-under-a-file": lambda t: (["calibrate", random_bytes(t / "m.tflite"), "--out", _write(t / "f", b"") / "c.json"],
                                             "--out"),
    "calibrate-out-is-a-fifo": lambda t: (["calibrate", random_bytes(t / "m.tflite"), "--out", _fifo(t / "c.json")],
                                          "--out " + str(t / "c.json") + ": is a device or fifo"),
    "evaluate-truncated-data": lambda t: (["evaluate", SHIPPED_MODEL, "--data", truncated(write_generated_npz(t / "g.npz", 5), t / "t.npz")], "t.npz"),
    # predict
    "predict-annotate-under-a-file": lambda t: (["predict", "x.jpg", "--annotate", _write(t / "f", b"") / "ann"], "--annotate"),
    "predict-oversized-image": lambda t: (["predict", png_header(t / "huge.png", 20000, 20000)], "huge.png"),
    "predict-above-opencv-limit": lambda t: (["predict", png_header(t / "giant.png", 40000, 40000), "--max-frame-pixels", "0"], "giant.png"),
    "predict-random-image": lambda t: (["predict", random_bytes(t / "r.jpg")], "r.jpg"),
    "predict-missing": lambda t: (["predict", t / "nope.jpg"], "nope.jpg"),
    "predict-folder-without-images": lambda t: (["predict", _write(_mkdir(t / "photos") / "a.gif", b"GIF89a").parent],
                                                "photos: no images or videos in it"),
    "calibrate-neutral-target-above-one": lambda t: (["calibrate", SHIPPED_MODEL, "--neutral-target", "2"], "--neutral-target"),
    "calibrate-neutral-target-nan": lambda t: (["calibrate", SHIPPED_MODEL, "--neutral-target", "nan"], "--neutral-target"),
    "inspect-a-fifo": lambda t: (["inspect", _fifo(t / "m.tflite")], "m.tflite: not a regular file"),
    "data-folder-holds-a-fifo": lambda t: (["data", "inspect", _fifo(_mkdir(_mkdir(_mkdir(t / "faces") / "train") / "happy") / "x.jpg").parents[2]],
                                           "x.jpg: unreadable image"),
    "predict-unknown-scheme": lambda t: (["predict", "foo://camera"], "cannot open foo://camera: refused, or not a stream"),
    "predict-fifo": lambda t: (["predict", _fifo(t / "f.jpg")], "f.jpg: not a regular file"),
    "predict-fifo-video": lambda t: (["predict", _fifo(t / "f.mp4")], "f.mp4: not a regular file"),
    "predict-dev-null": lambda t: (["predict", "/dev/null"], "/dev/null: not a regular file"),
    "predict-detector-model-is-emotion-model": lambda t: (["predict", "x.jpg", "--detector", "blazeface-short",
                                                           "--detector-model", SHIPPED_MODEL],
                                                          "gives 1 output(s), not the (128, 128, 3) input and 2 outputs"),
    "predict-haar-cascade-not-xml": lambda t: (["predict", "x.jpg", "--detector", "haar", "--detector-model",
                                                random_bytes(t / "c.xml")], "c.xml: not an OpenCV cascade"),
    "predict-yunet-model-is-emotion-model": lambda t: (["predict", "x.jpg", "--detector-model", SHIPPED_MODEL],
                                                       "not the one gray input and the 2-, 4- and 10-channel maps"),
    "predict-annotate-into-its-input-folder": lambda t: (["predict", _copy(SAMPLE_IMAGE, t / "a.jpg"), "--annotate", t],
                                                         "would overwrite the input"),
    "calibration-entries-a-list": lambda t: (_calibrated(t, ["ferplus"]), "m.calibration.json: not a fer-edge calibration"),
    "calibration-entry-a-number": lambda t: (_calibrated(t, {"ferplus": 3}), "calibration 'ferplus' is not an object"),
    "calibration-bias-text": lambda t: (_calibrated(t, {"ferplus": {"bias": ["a"] + [0] * 6}}), "needs 7 finite biases"),
    "calibration-temperature-null": lambda t: (_calibrated(t, {"ferplus": {"bias": [0] * 7, "temperature": None}}),
                                               "has temperature None; expected a number within 0.01-100"),
    "calibration-temperature-huge": lambda t: (_calibrated(t, {"ferplus": {"bias": [0] * 7, "temperature": 1e308}}),
                                               "has temperature 1e+308; expected a number within 0.01-100"),
    "predict-threads-huge": lambda t: (["predict", "x.jpg", "--threads", "100000"], "--threads"),
    "predict-corrupt-model": lambda t: (["predict", "x.jpg", "--model", truncated(SHIPPED_MODEL, t / "m.tflite", 0.5)], "m.tflite"),
    # train: the numeric options and the run folder, all refused before anything is written
    "train-epochs-zero": lambda t: (["train", "--epochs", "0", "--out", t / "run"], "--epochs"),
    "train-epochs-negative": lambda t: (["train", "--epochs", "-3", "--out", t / "run"], "--epochs"),
    "train-limit-zero": lambda t: (["train", "--train-limit", "0", "--out", t / "run"], "--train-limit"),
    "train-limit-negative": lambda t: (["train", "--train-limit", "-5", "--out", t / "run"], "--train-limit"),
    "train-lr-negative": lambda t: (["train", "--lr", "-1", "--out", t / "run"], "--lr"),
    "train-blocks-fewer-than-widths": lambda t: (["train", "--blocks", "2,2", "--out", t / "run"], "--blocks"),
    "train-batch-size-zero": lambda t: (["train", "--batch-size", "0", "--out", t / "run"], "--batch-size"),
    "train-batch-size-negative": lambda t: (["train", "--batch-size", "-4", "--out", t / "run"], "--batch-size"),
    "train-batch-larger-than-data": lambda t: (["train", "--data", write_generated_npz(t / "g.npz", 5), "--batch-size", "512",
                                                "--out", t / "run"], "--batch-size"),
    "train-widths-not-numbers": lambda t: (["train", "--widths", "abc", "--out", t / "run"], "--widths"),
    "train-stem-stride-zero": lambda t: (["train", "--stem-stride", "0", "--out", t / "run"], "--stem-stride"),
    "train-out-under-a-file": lambda t: (["train", "--out", _write(t / "f", b"") / "run"], "--out"),
    "train-lr-infinite": lambda t: (["train", "--lr", "inf", "--out", t / "run"], "--lr"),
    "train-resume-nothing": lambda t: (["train", "--resume", "--out", t / "run"], "--resume"),
    "train-resume-with-lr": lambda t: (["train", "--resume", "--lr", "0.1", "--out", t / "run"], "--lr"),
    "train-epochs-huge": lambda t: (["train", "--epochs", "100000000", "--out", t / "run"], "--epochs: 100000000 is not allowed; give 1 to 1000"),
    "train-warmup-longer-than-run": lambda t: (["train", "--epochs", "3", "--warmup-epochs", "1e30", "--out", t / "run"],
                                               "--warmup-epochs: 1e+30 is not allowed; give 0 up to the 3 epochs"),
    "train-logical-cpus-huge": lambda t: (["train", "--logical-cpus", "100000", "--out", t / "run"], "--logical-cpus"),
    "train-qat-with-widths": lambda t: (["train", "--qat", "--from", t / "run", "--widths", "8,8,8,8"], "--widths"),
    # demo
    "demo-unknown-extension": lambda t: (["demo", "--out", t / "x.xyz"], "x.xyz"),
    "demo-out-under-a-file": lambda t: (["demo", "--out", _write(t / "f", b"") / "d.jpg"], "--out"),
    "demo-out-is-a-folder": lambda t: (["demo", "--out", _mkdir(t / "d")], "--out"),
    "demo-random-model": lambda t: (["demo", "--model", random_bytes(t / "m.tflite"), "--out", t / "d.jpg"], "m.tflite"),
    # daemon: checked before a camera or model is opened
    "daemon-max-fps-infinite": lambda t: (["daemon", "--check-config", "--max-fps", "inf"], "pipeline.max_fps"),
    "daemon-vote-window-huge": lambda t: (["daemon", "--check-config", "--config", _write(t / "d.toml", b"[smoothing]\nwindow = 100000000000000000000\n")],
                                          "smoothing.window: expected an integer 1..1000 (frames)"),
    "daemon-http-host-empty": lambda t: (["daemon", "--check-config", "--http-host", ""], "http.host: expected an address; empty listens"),
    "daemon-timeout-infinite": lambda t: (["daemon", "--check-config", "--config", _write(t / "d.toml", b"[source]\nopen_timeout_s = inf\n")],
                                          "source.open_timeout_s: expected a number of seconds > 0 and at most 86400"),
}
if SYS_READ_ONLY:
    CASES.update({
        "convert-out-unwritable": lambda t: (["convert", _write(t / "m.keras", b"x"), "--out", UNWRITABLE / "m.tflite"], "--out"),
        "predict-annotate-unwritable": lambda t: (["predict", "x.jpg", "--annotate", UNWRITABLE], "--annotate"),
        "demo-out-unwritable": lambda t: (["demo", "--out", UNWRITABLE / "d.jpg"], "--out"),
        "train-out-unwritable": lambda t: (["train", "--out", UNWRITABLE / "run"], "--out"),
        "evaluate-out-unwritable": lambda t: (["evaluate", "m.tflite", "--out", UNWRITABLE], "--out"),
        "calibrate-out-unwritable": lambda t: (["calibrate", random_bytes(t / "m.tflite"), "--out", UNWRITABLE / "c.json"], "--out"),
        "daemon-jsonl-unwritable": lambda t: (["daemon", "--check-config", "--jsonl", Path("/sys/fer-edge-test.jsonl")],
                                              "output.jsonl"),
    })

if not ctypes.util.find_library("edgetpu"):  # LiteRT's half-built delegate used to print a traceback at exit
    CASES["predict-edgetpu-missing"] = lambda t: (["predict", "x.jpg", "--device", "edgetpu"], "Edge TPU")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _copy(source: Path, path: Path) -> Path:
    return _write(path, source.read_bytes())


def _calibrated(folder: Path, calibrations) -> list:
    """`predict` of the shipped model (copied) with the calibration file `calibrations` beside it."""
    from fer_edge.edge_runtime.calibration import FORMAT, sidecar_path

    model = _copy(SHIPPED_MODEL, folder / "m.tflite")
    document = {"format": FORMAT, "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
                "calibrations": calibrations}
    _write(sidecar_path(model), json.dumps(document).encode())
    return ["predict", "x.jpg", "--model", model, "--calibration", "ferplus"]


def _weights_only(path: Path) -> Path:
    """An .h5 holding weights and no model config, like a run's best_weights.h5."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_group("model_weights")
    return path


def _float_tiff(path: Path) -> Path:
    """A float32 TIFF: a real image format OpenCV's TIFF reader refuses."""
    import cv2

    cv2.imwrite(str(path), np.full((64, 64), 0.5, np.float32))
    return path


def _fifo(path: Path) -> Path:
    """A named pipe no one writes to: opening it to read waits forever."""
    os.mkfifo(path)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _extra(path: Path, **arrays) -> Path:
    """Add arrays to an .npz made by `npz`."""
    with np.load(path) as z:
        np.savez(path, **dict(z), **arrays)
    return path


def _npy_as_npz(path: Path) -> Path:
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path):
    args, names = CASES[case](tmp_path)
    before = tree(tmp_path)
    assert_one_line_error(cli(*args), names)
    assert tree(tmp_path) == before  # no new, changed or temporary file


def test_corrupt_run_folder_given_to_convert(tmp_path):
    """Both halves of a run folder damaged, in one TensorFlow process each."""
    h5_magic = b"\x89HDF\r\n\x1a\n"
    for name, config, weights, names in (
            ("bad_config", b'{"model": "seresnet", "preset": ', h5_magic, "config.json"),
            ("bad_weights", GOOD_RUN_CONFIG, h5_magic + bytes(300), "best_weights.h5")):
        run = run_folder(tmp_path / name, config, weights)
        before = tree(tmp_path)
        assert_one_line_error(cli("convert", run, "--float", "--out", tmp_path / "m.tflite"), names)
        assert tree(tmp_path) == before


# --- the model loader, fuzzed ---------------------------------------------------------------------

def mutated_model(seed: int) -> bytes:
    """The shipped model with random bytes changed, or cut short: a quarter each in the whole file,
    the flatbuffer's tables near its end, the embedded metadata, and truncation."""
    rng = np.random.default_rng(seed)
    data = bytearray(SHIPPED_MODEL.read_bytes())
    kind = seed % 4
    if kind == 3:
        return bytes(data[:int(rng.integers(0, len(data)))])
    low = {0: 0, 1: len(data) - 200_000, 2: len(data) - 500}[kind]
    for position in rng.integers(low, len(data), int(rng.integers(1, 20))):
        data[position] = rng.integers(0, 256)
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_refusals(tmp_path_factory) -> dict[int, str]:
    """Loads 200 mutated copies through `inspect_model` and the classifier; returns {seed: which refused}."""
    from fer_edge.convert.inspect import inspect_model
    from fer_edge.edge_runtime.classifier import ClassifierOptions, EmotionClassifier

    folder = tmp_path_factory.mktemp("fuzz")
    refused = {}
    for seed in range(200):
        path = folder / f"m{seed}.tflite"
        path.write_bytes(mutated_model(seed))
        stage = "inspect"
        try:
            inspect_model(path)
            stage = "classifier"
            EmotionClassifier(ClassifierOptions(path, num_threads=1)).classify(np.zeros((2, 48, 48), np.uint8))
        except FerEdgeError as error:  # anything else fails the test with its traceback
            assert str(path) in str(error) and "\n" not in str(error), (seed, str(error))
            refused[seed] = stage
        path.unlink()
    return refused


def test_mutated_models_never_raise_anything_but_a_model_error(fuzz_refusals):
    # The corpus really damages models (not only weights), in both readers.
    assert len(fuzz_refusals) > 50 and set(fuzz_refusals.values()) == {"inspect", "classifier"}


def test_mutated_models_through_inspect(fuzz_refusals, tmp_path):
    # A few refused by inspect_model, through the real verb: damaged flatbuffer tables and cards.
    by_inspect = [seed for seed, stage in fuzz_refusals.items() if stage == "inspect"]
    seeds = [s for s in by_inspect if s % 4 == 1][:2] + [s for s in by_inspect if s % 4 == 2][:2]
    assert len(seeds) == 4
    for seed in seeds:
        path = _write(tmp_path / f"m{seed}.tflite", mutated_model(seed))
        assert_one_line_error(cli("inspect", path), str(path))


# --- nothing half-written -------------------------------------------------------------------------

def test_atomic_path_leaves_nothing_on_exit(tmp_path):
    with pytest.raises(SystemExit):
        with atomic_path(tmp_path / "m.tflite") as tmp:
            tmp.write_bytes(b"half")
            raise SystemExit(143)  # what the CLI's SIGTERM handler raises
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_names_a_target_it_cannot_replace(tmp_path):
    """The rename fails (here: a folder holds the name; in the field: an immutable file) after the
    work is done: one FerEdgeError naming the target, and no temporary file left."""
    (tmp_path / "m.tflite" / "inside").mkdir(parents=True)
    with pytest.raises(FerEdgeError, match=r"m.tflite: cannot replace it .*nothing was written"):
        with atomic_path(tmp_path / "m.tflite") as tmp:
            tmp.write_bytes(b"model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


def test_predict_killed_mid_video_leaves_no_annotation(tmp_path):
    import cv2

    video = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    still = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for _ in range(400):
        writer.write(still)
    writer.release()
    out = tmp_path / "ann"
    process = subprocess.Popen([sys.executable, "-m", "fer_edge", "predict", str(video), "--annotate", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(20):  # some frames processed and written
        process.stdout.readline()
    assert process.poll() is None, "the video ended before the test could interrupt it"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert list(out.iterdir()) == []  # neither long.mp4 nor its temporary file


def test_opencv_warnings_do_not_repeat_the_verbs_own_line(tmp_path):
    result = cli("predict", _float_tiff(tmp_path / "f.tiff"))
    assert "f.tiff: OpenCV cannot decode" in result.stderr and "WARN" not in result.stderr, result.stderr


def test_predict_names_an_empty_folder_and_goes_on(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "photos").mkdir()
    shutil.copy(SAMPLE_IMAGE, tmp_path / "photos" / "a.jpg")
    result = cli("predict", tmp_path / "empty", tmp_path / "photos")
    assert result.returncode == 0, result.stderr
    assert f"skipped {tmp_path / 'empty'}: no images or videos in it" in result.stderr
    assert '"source": "' + str(tmp_path / "photos" / "a.jpg") in result.stdout


def test_predict_skips_oversized_image_and_goes_on(tmp_path):
    import cv2

    huge = png_header(tmp_path / "a_huge.png", 9000, 9000)
    cv2.imwrite(str(tmp_path / "b_small.jpg"), np.full((64, 64, 3), 128, np.uint8))
    result = cli("predict", tmp_path, "--max-frame-pixels", "1000000")
    assert result.returncode == 0, result.stderr
    assert f"skipped {huge}: 9000x9000 frame (81.0 megapixels) is larger than the cap of 1.0" in result.stderr
    assert '"source": "' + str(tmp_path / "b_small.jpg") in result.stdout


def test_truncated_jpeg_and_video_are_named(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "whole.jpg"), np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    truncated(tmp_path / "whole.jpg", tmp_path / "cut.jpg")
    writer = cv2.VideoWriter(str(tmp_path / "whole.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 15, (160, 120))
    for i in range(30):
        writer.write(np.full((120, 160, 3), i * 8, np.uint8))
    writer.release()
    truncated(tmp_path / "whole.avi", tmp_path / "cut.avi")
    result = cli("predict", tmp_path / "cut.jpg", tmp_path / "cut.avi")
    assert result.returncode == 0, result.stderr
    assert f"warning: {tmp_path / 'cut.jpg'}: JPEG data ends early" in result.stderr
    assert f"warning: {tmp_path / 'cut.avi'}: ended after" in result.stderr


def test_daemon_http_port_in_use_names_the_keys(tmp_path):
    import socket

    import cv2

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (160, 120))
    for _ in range(5):
        writer.write(np.zeros((120, 160, 3), np.uint8))
    writer.release()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("daemon", "--source", video, "--no-loop", "--http-port", port)
    assert_one_line_error(result, f"http.host, http.port: cannot listen on 127.0.0.1:{port}")


def test_evaluate_without_a_ferplus_majority_says_n_a(tmp_path):
    # Votes that give no image a FER+ majority: the FER+ scores are n/a, not a crash formatting None.
    data = _extra(npz(tmp_path / "v.npz", usage=np.array(["Training", "PublicTest", "PrivateTest"])),
                  ferplus_votes=np.ones((3, 10), int))
    result = cli("evaluate", SHIPPED_MODEL, "--data", data)
    assert result.returncode == 0, result.stderr
    assert "FER+ majority (0 images): accuracy n/a  macro F1 n/a" in result.stdout


def test_16_bit_png_folder_is_scaled_not_saturated(tmp_path):
    import cv2

    from fer_edge.train.data import load_dataset

    folder = tmp_path / "train" / "happy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    cv2.imwrite(str(folder / "ramp.png"), ramp)
    image = load_dataset(tmp_path).images[0]
    assert abs(int(image.mean()) - 127) <= 2 and len(np.unique(image)) > 200  # not 0/255


def test_tiny_and_one_pixel_wide_images_have_no_faces(tmp_path):
    """Frames smaller than any face the detector searches for (turned searches included) are
    answered with no faces, not a traceback."""
    import cv2

    shapes = [(1, 1), (1, 5000), (5000, 1), (64, 1), (1, 64), (7, 7), (3, 2000), (63, 64)]
    paths = []
    for height, width in shapes:
        paths.append(tmp_path / f"{height}x{width}.png")
        cv2.imwrite(str(paths[-1]), np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8))
    result = cli("predict", *paths, "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(shapes) and all('"faces": []' in line for line in lines), result.stdout
