"""Output calibrations stored beside a model: a per-class logit bias and a temperature.

`fer-edge calibrate` fits them (e.g. on the FER+ view of PublicTest) and writes
`<model>.calibration.json` next to the `.tflite`; the runtime reads that file with the standard
library only. The file names the model's sha256, so a calibration fitted for one model is never
applied to another.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.errors import ModelError

FORMAT = "fer-edge-calibration/1"
NONE = "none"
# Probabilities are floored before the log: an int8 softmax output of 0 only says "below half a step".
FLOOR = 1.0 / 512
# A huge temperature is finite yet flattens every output to 1/7: fits and files stay within this.
TEMPERATURE_RANGE = (0.01, 100.0)


@dataclass(frozen=True)
class Calibration:
    """p -> softmax(log(max(p, FLOOR)) / temperature + bias)."""

    bias: np.ndarray
    temperature: float = 1.0

    def log_probs(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated log-probabilities in float64: a fit's finite differences (~1e-8) vanish in
        float32 rounding, and the optimiser then stops where it started."""
        logits = np.log(np.maximum(probs, FLOOR).astype(np.float64)) / self.temperature + self.bias
        logits -= logits.max(axis=-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return np.exp(self.log_probs(probs)).astype(np.float32)


def sidecar_path(model_path: str | Path) -> Path:
    """`model.tflite` -> `model.calibration.json` in the same folder."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".calibration.json")


def load(model_path: str | Path, name: str, model_sha256: str, num_classes: int) -> Calibration:
    """The calibration `name` from the model's sidecar file; ModelError names what is wrong."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise ModelError(f"calibration {name!r}: no {path.name} beside {model_path} "
                         "(fit one with `fer-edge calibrate MODEL`)")
    try:
        document = json.loads(path.read_text())
        entries = document["calibrations"]
        if not isinstance(entries, dict):
            raise TypeError(f"'calibrations' is a {type(entries).__name__}, not an object of named calibrations")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path}: not a fer-edge calibration file ({type(error).__name__}: {error})") from None
    if document.get("model_sha256") != model_sha256:
        raise ModelError(f"{path}: fitted for a model with sha256 {document.get('model_sha256')}, not this "
                         f"{Path(model_path).name} ({model_sha256}); re-run `fer-edge calibrate`")
    if name not in entries:
        raise ModelError(f"calibration {name!r} is not in {path}; it has: {', '.join(entries) or 'none'}")
    entry = entries[name]
    if not isinstance(entry, dict):
        raise ModelError(f"{path}: calibration {name!r} is not an object with a bias and a temperature")
    try:
        bias = np.asarray(entry.get("bias", []), np.float64)
    except (TypeError, ValueError):  # text among the numbers
        bias = np.zeros(0)
    if bias.shape != (num_classes,) or not np.isfinite(bias).all():
        raise ModelError(f"{path}: calibration {name!r} needs {num_classes} finite biases")
    temperature, (low, high) = entry.get("temperature", 1.0), TEMPERATURE_RANGE
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not low <= temperature <= high:
        raise ModelError(f"{path}: calibration {name!r} has temperature {temperature!r}; expected a number "
                         f"within {low:g}-{high:g}")
    return Calibration(bias.astype(np.float32), float(temperature))
