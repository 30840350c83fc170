"""Keras model -> `.tflite`: float32, or full-integer int8 from QAT ranges or post-training calibration.

Every export has a fixed batch (1 by default): with a dynamic batch the SE block's Reshape becomes
SHAPE / STRIDED_SLICE / PACK int32 ops, which are neither int8 nor mappable to the Edge TPU. A batch-1
int8 model cannot be resized at run time either (the Reshape's constant shape no longer fits), so
flip averaging in one invoke needs its own batch-2 export.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_edge import __version__, atomic, metadata, spec
from fer_edge.convert.inspect import ModelReport, inspect_model
from fer_edge.train.source import SourceModel
from fer_edge.errors import FerEdgeError

DEFAULT_CALIBRATION = 500


def calibration_images(dataset, count: int = DEFAULT_CALIBRATION, seed: int = 0) -> np.ndarray:
    """A stratified, seeded draw of `count` Training faces, preprocessed exactly as at inference."""
    if count <= 0:
        raise FerEdgeError(f"--calibration: needs at least 1 image, got {count}")
    idx = dataset.subset("Training", count, seed)
    if len(idx) == 0:
        raise FerEdgeError(f"--data: {dataset.source} has no Training images to calibrate int8 ranges with")
    return spec.preprocess_faces(dataset.images[idx])


def to_tflite(model, int8: bool, calibration: np.ndarray | None = None, batch: int = 1) -> bytes:
    """Convert a tf-keras model with a fixed batch of `batch` faces.

    `int8=True` gives int8 input and output and int8 kernels throughout. A QAT model brings its
    own ranges; a float model needs `calibration` faces for post-training quantization.
    """
    from fer_edge.train.qat import is_qat_model
    from fer_edge.train.tf_setup import tf

    qat = is_qat_model(model)
    if qat and not int8:
        raise FerEdgeError("--float: a quantization-aware model exports only as int8; convert its float run instead")
    if int8 and not qat and (calibration is None or len(calibration) == 0):
        raise FerEdgeError("--calibration: post-training int8 needs calibration images, got none")
    forward = tf.function(lambda image: model(image, training=False),
                          input_signature=[tf.TensorSpec((batch, *spec.INPUT_SHAPE), tf.float32, name="image")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], model)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if int8 and not qat:
        # Whole batches of calibration faces; a short last batch is filled up cyclically by np.resize.
        converter.representative_dataset = lambda: ([np.resize(calibration[i:i + batch], (batch, *calibration.shape[1:]))]
                                                    for i in range(0, len(calibration), batch))
        # Fail the conversion, rather than leave a float kernel behind, if an op has no int8 version.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


@dataclass
class ExportResult:
    path: Path
    quantization: str
    report: ModelReport
    metadata: dict


def export(source: SourceModel, out: str | Path, int8: bool = True, dataset=None,
           calibration: int = DEFAULT_CALIBRATION, seed: int = 0, name: str | None = None,
           version: str = "1", batch: int = 1) -> ExportResult:
    """Convert `source`, embed its metadata and write `out` atomically.

    A float source exported as int8 is calibrated on `calibration` Training faces of `dataset`.
    Nothing is written unless the conversion succeeds.
    """
    if int8 and not source.qat:
        if dataset is None:
            raise FerEdgeError("--data: post-training int8 needs FER2013 Training images to calibrate with")
        faces = calibration_images(dataset, calibration, seed)
    else:
        faces = None
    if batch < 1:
        raise FerEdgeError(f"--batch: needs at least 1 face per invoke, got {batch}")
    tflite = to_tflite(source.model, int8, faces, batch)
    quantization = "float32" if not int8 else "qat-int8" if source.qat else "ptq-int8"
    out = Path(out)
    with atomic.atomic_path(out) as tmp:
        # The metadata records the tensors' quantization as the interpreter reads it from the file.
        tmp.write_bytes(tflite)
        report = inspect_model(tmp)
        if int8 and not report.fully_int8:  # verified, not assumed: nothing is written otherwise
            raise FerEdgeError(f"{out}: conversion left non-int8 parts: " + "; ".join(report.int8_problems()))
        meta = embedded_metadata(report, quantization, source, name or source.name, version)
        if faces is not None:
            meta["calibration"] = {"split": "Training", "images": int(len(faces)), "seed": seed, "data": dataset.source}
        tmp.write_bytes(metadata.embed(tflite, meta))
    return ExportResult(out, quantization, inspect_model(out), meta)


def embedded_metadata(report: ModelReport, quantization: str, source: SourceModel, name: str, version: str) -> dict:
    """The metadata the edge runtime reads: classes, tensor quantization, preprocessing, origin."""
    return {
        "name": name,
        "version": version,
        "class_names": list(spec.CLASS_NAMES),
        "input_shape": [int(d) for d in report.input.shape],
        "input": report.input.quantization_dict(),
        "output": report.output.quantization_dict(),
        "preprocessing": dict(spec.PREPROCESSING),
        "quantization": quantization,
        "source_model": {"path": str(source.path), "name": source.name, "qat": source.qat},
        "macs": report.macs,
        "exported_by": f"fer-edge {__version__}",
    }


def input_maps_raw_pixels(report: ModelReport) -> bool:
    """True when the int8 input is scale 1/255, zero-point -128: a raw pixel p feeds exactly p - 128."""
    tensor = report.input
    return (tensor.dtype == "int8" and tensor.zero_point == -128
            and abs(tensor.scale - spec.PREPROCESSING["scale"]) < 1e-9)
