"""The Keras model a conversion or benchmark starts from: a run folder or a saved model file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fer_edge.errors import FerEdgeError
from fer_edge.spec import INPUT_SHAPE, NUM_CLASSES


@dataclass
class SourceModel:
    model: object
    """The tf-keras model, float or quantization-aware."""
    path: Path
    qat: bool
    """True when the model carries fake-quantization ranges learned by QAT."""

    @property
    def name(self) -> str:
        return self.model.name


def load_source(ref: str | Path) -> SourceModel:
    """Load a float or QAT model from a run folder or a `.keras` / `.h5` file, checking its shapes.

    Every problem (missing path, unreadable file, a model that does not take 48x48x1 faces or
    does not output 7 classes) raises FerEdgeError naming the path.
    """
    from fer_edge.train import qat
    from fer_edge.train.run import load_run_model

    path = Path(ref)
    if not path.exists():
        raise FerEdgeError(f"{path}: no such model file or run folder")
    if path.suffix == ".tflite":
        raise FerEdgeError(f"{path}: already a TFLite model; give the Keras model or run folder it came from")
    if path.is_dir():
        model = load_run_model(path)
    else:
        try:
            # The scope knows tfmot's wrappers and our SE config, so QAT .h5 files load too.
            model = qat.load_qat_model(path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "No model config" in reason:  # e.g. a run's best_weights.h5: the run folder has the model
                reason = "weights only, no model in it; give the run folder it belongs to"
            raise FerEdgeError(f"{path}: cannot load as a Keras model ({reason})") from None
    _check_shapes(model, path)
    return SourceModel(model, path, qat.is_qat_model(model))


def _check_shapes(model, path: Path) -> None:
    inputs = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if inputs != INPUT_SHAPE:
        raise FerEdgeError(f"{path}: model input is {model.input_shape}, expected (None, 48, 48, 1) grayscale faces")
    if model.output_shape[-1] != NUM_CLASSES:
        raise FerEdgeError(f"{path}: model outputs {model.output_shape[-1]} values, expected {NUM_CLASSES} classes")
