"""Classify face crops into the seven FER2013 emotions with one TFLite interpreter."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_edge import metadata, spec
from fer_edge.edge_runtime import calibration
from fer_edge.edge_runtime.errors import ModelError
from fer_edge.edge_runtime.interpreter import make_interpreter, reading_model

# The model that ships inside the package (added by the release; absent in a source checkout).
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "fer_edge_int8.tflite"
TTA_MODES = ("none", "flip")


def resolve_model(path: str | Path | None) -> Path:
    """The one answer to "which model": `path`, or the model shipped with fer-edge when it is None
    or empty; ModelError when that file is not there."""
    model = Path(path) if path else SHIPPED_MODEL
    if not model.is_file():
        raise ModelError(f"no model at {model}" + ("" if path else " (this install ships none)")
                         + ": give a .tflite with --model")
    return model


@dataclass
class ClassifierOptions:
    """How to load and run an emotion model."""

    model_path: str | Path
    """The `.tflite` model: int8 (as exported by fer-edge) or float32."""

    num_threads: int | None = None
    """CPU threads for the interpreter; None uses every core."""

    device: str = "cpu"
    """`cpu`, `edgetpu`, `edgetpu:usb` or `edgetpu:pci`."""

    fallback_cpu: bool = False
    """Run on the CPU, with a warning, when the Edge TPU cannot be used."""

    verify_sha256: str | None = None
    """Expected sha256 of the model file (from its model card); a mismatch refuses the model."""

    tta: str = "none"
    """Test-time augmentation: `none`, or `flip` to average each face's probabilities with those of its
    mirror image. Flip costs a second pass: one invoke per face on a batch-2 export (`fer-edge convert
    --batch 2`) or a dynamic-batch model, two invokes on a batch-1 model."""

    calibration: str = "none"
    """`none`, or the name of a calibration that `fer-edge calibrate` stored beside the model in
    `<model>.calibration.json` (e.g. `ferplus`): a per-class logit bias and a temperature applied to the
    probabilities (after flip averaging). It changes which class wins, so measure it before use."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EmotionClassifier:
    """Owns one interpreter and turns face crops into per-class probabilities."""

    def __init__(self, options: ClassifierOptions):
        self.options = options
        if options.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {options.tta!r}")
        path = Path(options.model_path)
        expected = options.verify_sha256
        if expected is None and path.resolve() == SHIPPED_MODEL:
            from fer_edge.card import shipped_sha256

            expected = shipped_sha256()  # the shipped file must be the one its model card describes
        digest = file_sha256(path) if path.is_file() and (expected or options.calibration != calibration.NONE) else None
        if expected and digest and digest != expected.lower():
            raise ModelError(f"{path}: sha256 does not match the expected {expected}")
        self.metadata = metadata.read(path) if path.is_file() else None
        self._check_metadata(path)
        self._interpreter = make_interpreter(path, options.num_threads, options.device, options.fallback_cpu)
        # allocate_tensors fails e.g. for an Edge TPU-compiled model on a CPU without the delegate.
        with reading_model(path, "prepare"):
            self._interpreter.allocate_tensors()
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
            self._check_tensors(path)
            # Our int8 exports have a fixed batch of 1 (a dynamic batch adds int32 shape ops); models
            # with a dynamic batch get all faces of a frame in one invoke.
            self._dynamic_batch = int(self._input["shape_signature"][0]) == -1
            self._batch = int(self._input["shape"][0])
        names = (self.metadata or {}).get("class_names") or spec.CLASS_NAMES
        self.class_names: tuple[str, ...] = tuple(names)
        self.calibration = None if options.calibration == calibration.NONE else calibration.load(
            path, options.calibration, digest, spec.NUM_CLASSES)

    def _check_metadata(self, path: Path) -> None:
        problems = spec.contract_problems(self.metadata) if self.metadata is not None else []
        if problems:
            raise ModelError(f"{path}: its metadata does not fit this runtime: " + "; ".join(problems))

    def _check_tensors(self, path: Path) -> None:
        # The signature shows dynamic sizes as -1 (a detector's whole-frame input), the shape as 1.
        shape = tuple(int(d) for d in self._input.get("shape_signature", self._input["shape"])[1:])
        if shape != spec.INPUT_SHAPE:
            raise ModelError(f"{path} takes input {shape}, this runtime feeds {spec.INPUT_SHAPE} grayscale faces "
                             "(is it an emotion model?)")
        if self._input["dtype"] not in (np.int8, np.uint8, np.float32):
            raise ModelError(f"{path} takes {np.dtype(self._input['dtype']).name} input; expected int8, uint8 or float32")
        if int(self._output["shape"][-1]) != spec.NUM_CLASSES:
            raise ModelError(f"{path} outputs {int(self._output['shape'][-1])} values, expected {spec.NUM_CLASSES}")

    def _preprocess(self, faces) -> np.ndarray:
        """Face crops -> the model's input tensor, quantized with its own scale and zero-point."""
        x = spec.preprocess_faces(faces)
        scale, zero_point = self._input["quantization"]
        if self._input["dtype"] == np.float32:
            return x
        return spec.quantize(x, scale, zero_point, self._input["dtype"])

    def _postprocess(self, raw: np.ndarray) -> np.ndarray:
        """Model output -> float32 probabilities, dequantized when the model is quantized."""
        scale, zero_point = self._output["quantization"]
        if self._output["dtype"] == np.float32:
            return raw.astype(np.float32)
        return spec.dequantize(raw, scale, zero_point)

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], batch.shape)
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])

    def _run(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs for a whole batch: one invoke on a dynamic-batch model, else chunks of the fixed
        batch size, the last one padded by repeating its final face."""
        if self._dynamic_batch:
            return self._invoke(x).reshape(len(x), -1)
        size = self._batch
        outputs = []
        for start in range(0, len(x), size):
            chunk = x[start:start + size]
            if len(chunk) < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            outputs.append(self._invoke(chunk).reshape(size, -1))
        return np.concatenate(outputs)[:len(x)]

    def classify(self, faces) -> np.ndarray:
        """Return (N, 7) float32 probabilities for N face crops (gray or BGR, any size)."""
        if len(faces) == 0:
            return np.zeros((0, spec.NUM_CLASSES), np.float32)
        x = self._preprocess(faces)
        n = len(x)
        if self.options.tta == "flip":
            # Each face next to its mirror image, so a batch-2 model sees the pair in one invoke.
            x = np.stack([x, x[:, :, ::-1]], axis=1).reshape(2 * n, *x.shape[1:])
        probs = self._postprocess(self._run(x))
        if self.options.tta == "flip":
            probs = probs.reshape(n, 2, -1).mean(axis=1)
        return self.calibration.apply(probs) if self.calibration else probs
