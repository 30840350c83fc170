"""The run folder: the hand-over between training, QAT, evaluation and conversion.

A run folder holds `config.json` (the TrainConfig as run, plus what the run measured about
itself), `state.json` (the epoch reached, early-stopping state, history), one TensorFlow
checkpoint per finished epoch under `checkpoint/` (weights, optimizer state, schedule position),
`best_weights.h5` (the epoch selected on PublicTest), `history.csv`, `curves.png`,
`final_metrics.json`, for QAT runs `qat_model.h5`, and for distilled runs `teacher_targets.npz`
(the soft targets, computed once). Only this module spells those names.
"""
from __future__ import annotations

import json
from pathlib import Path

from fer_edge import atomic
from fer_edge.errors import FerEdgeError
from fer_edge.train.config import TrainConfig, resolve_config

CONFIG = "config.json"
STATE = "state.json"
BEST_WEIGHTS = "best_weights.h5"
CHECKPOINTS = "checkpoint"
HISTORY = "history.csv"
CURVES = "curves.png"
FINAL_METRICS = "final_metrics.json"
QAT_MODEL = "qat_model.h5"
TEACHER_TARGETS = "teacher_targets.npz"
# Two checkpoints are kept, so the one state.json names survives a kill while the next is saved.
CHECKPOINTS_KEPT = 2


def read_json(path: Path) -> dict:
    """A run file as a dict; a missing, unreadable or corrupt file is one line naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FerEdgeError(f"{path}: missing; is {Path(path).parent} a training run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FerEdgeError(f"{path}: corrupt or unreadable run file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise FerEdgeError(f"{path}: corrupt run file (expected a JSON object)")
    return data


def read_values(path: Path):
    """A run file's values by dotted key, e.g. `value("PrivateTest.accuracy")`, each checked to be a
    `kind`: a missing or mistyped key is one line naming the file and the key."""
    data = read_json(path)

    def value(key: str, kind: type | tuple = (int, float)):
        found, parts = data, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(found, dict) or part not in found:
                raise FerEdgeError(f"{path}: missing {'.'.join(parts[:i + 1])}; is {Path(path).parent} a finished "
                                   "training run?")
            found = found[part]
        if isinstance(found, bool) or not isinstance(found, kind):  # JSON's true is an int to Python
            raise FerEdgeError(f"{path}: {key} is {found!r}, expected {_KINDS.get(kind, 'a number')}")
        return found

    return value


_KINDS = {str: "a string", int: "an integer"}


def config_dict(run: str | Path) -> dict:
    return read_json(Path(run) / CONFIG)


def load_config(run: str | Path) -> TrainConfig:
    """The run's TrainConfig; a config.json whose network cannot be built is refused here, naming the key."""
    path = Path(run) / CONFIG
    try:
        cfg = TrainConfig.from_dict(config_dict(run))
        if cfg.model == "seresnet":
            resolve_config(cfg.preset, **cfg.overrides)
        return cfg
    except (TypeError, ValueError, AttributeError) as exc:
        raise FerEdgeError(f"{path}: not a valid run configuration ({one_line(exc)})") from None


def write_config(run: Path, config: dict) -> None:
    atomic.write_json(Path(run) / CONFIG, config)


def new_state() -> dict:
    return {"epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0, "history": [], "stopped_early": False}


def has_state(run: str | Path) -> bool:
    return (Path(run) / STATE).exists()


def read_state(run: str | Path) -> dict:
    state = read_json(Path(run) / STATE)
    missing = {"epoch", "best", "best_epoch", "wait", "history", "stopped_early"} - set(state)
    if missing:
        raise FerEdgeError(f"{Path(run) / STATE}: corrupt run state (missing {', '.join(sorted(missing))})")
    return state


def write_state(run: Path, state: dict) -> None:
    atomic.write_json(Path(run) / STATE, state)


def checkpoint_dir(run: str | Path) -> Path:
    return Path(run) / CHECKPOINTS


def epoch_checkpoint(run: str | Path, epoch: int) -> Path:
    """The checkpoint prefix written at the end of `epoch` (TensorFlow's `ckpt-N` naming)."""
    return checkpoint_dir(run) / f"ckpt-{epoch}"


def resumable_checkpoint(run: str | Path, state: dict) -> Path:
    """The checkpoint that matches state.json, or a clear refusal when there is none."""
    prefix = epoch_checkpoint(run, state["epoch"])
    if not prefix.with_name(prefix.name + ".index").exists():
        raise FerEdgeError(f"{Path(run) / STATE}: says epoch {state['epoch']} finished, but its checkpoint "
                           f"{prefix} is missing; the run cannot resume exactly (start a new run, or "
                           f"restore the checkpoint folder)")
    return prefix


def is_qat(run: str | Path) -> bool:
    return bool(config_dict(run).get("qat_from"))


def load_run_model(run: str | Path):
    """Rebuild a run's model (float, or quantization-aware for QAT runs) and load its best weights."""
    from fer_edge.train.models import build_model
    from fer_edge.train.tf_setup import tf

    run = Path(run)
    if not (run / CONFIG).exists() or not (run / BEST_WEIGHTS).exists():
        raise FerEdgeError(f"{run}: not a finished training run (needs {CONFIG} and {BEST_WEIGHTS})")
    cfg = load_config(run)
    tf.keras.mixed_precision.set_global_policy("float32")
    try:  # wrong keys, types or values in a damaged config.json fail here
        model = build_model(cfg.model, cfg.preset, **cfg.overrides)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FerEdgeError(f"{run / CONFIG}: not a valid run configuration ({one_line(exc)})") from None
    if cfg.qat_from:
        from fer_edge.train.qat import quantize_for_training

        model = quantize_for_training(model)
    try:
        model.load_weights(str(run / BEST_WEIGHTS))
    except (OSError, ValueError, KeyError) as exc:  # h5py: truncated/foreign file; Keras: mismatched layers
        raise FerEdgeError(f"{run / BEST_WEIGHTS}: cannot load the run's weights ({one_line(exc)})") from None
    return model


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
