"""Bad input to the conversion verbs: one clear line naming the file or argument, exit 1, no output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import generated_faces, run_cli
from fer_edge.convert.edgetpu import plan
from fer_edge.convert.inspect import ModelReport, OpInfo, TensorInfo


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Tiny untrained models saved the ways users save them: right, wrong input, wrong classes, QAT."""
    from fer_edge.train.qat import quantize_for_training
    from fer_edge.train.models import build_model
    from fer_edge.train.tf_setup import tf

    folder = tmp_path_factory.mktemp("models")
    small = build_model("seresnet", "edge", widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), dense=0)
    small.save(folder / "small.keras")
    quantize_for_training(small).save(folder / "small_qat.h5")
    layers = tf.keras.layers
    for name, shape, classes in (("rgb64", (64, 64, 3), 7), ("five_classes", (48, 48, 1), 5)):
        inputs = layers.Input(shape)
        outputs = layers.Dense(classes, activation="softmax")(layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs)))
        tf.keras.Model(inputs, outputs).save(folder / f"{name}.keras")
    (folder / "corrupt.keras").write_bytes(b"PK\x03\x04 not really a keras archive")
    (folder / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    (folder / "corrupt.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(100))
    return folder


def fails(*args, mentions: str) -> str:
    """Run a verb expected to fail; check its message is one line and names `mentions`."""
    output = run_cli(*args, expect=1).output
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and mentions in lines[0], output
    return lines[0]


def no_output_left(folder: Path) -> bool:
    return not list(folder.glob("*.tflite*")) and not list(folder.glob(".*.tmp*"))


@pytest.mark.parametrize("name", ["corrupt.keras", "corrupt.h5"])
def test_corrupt_model_file(models, tmp_path, name):
    fails("convert", models / name, "--float", "--out", tmp_path / "m.tflite", mentions=str(models / name))
    assert no_output_left(tmp_path)


def test_missing_model(tmp_path):
    line = fails("convert", tmp_path / "nope.keras", "--out", tmp_path / "m.tflite", mentions="nope.keras")
    assert "no such model file or run folder" in line


def test_mismatched_input_shape(models, tmp_path):
    line = fails("convert", models / "rgb64.keras", "--float", "--out", tmp_path / "m.tflite",
                 mentions=str(models / "rgb64.keras"))
    assert "(None, 64, 64, 3)" in line and "48, 48, 1" in line
    assert no_output_left(tmp_path)


def test_wrong_number_of_classes(models, tmp_path):
    fails("convert", models / "five_classes.keras", "--float", "--out", tmp_path / "m.tflite", mentions="5 values")


def test_empty_calibration_set(models, tmp_path):
    images, labels = generated_faces(2)
    data = tmp_path / "test_only.npz"
    np.savez(data, images=images, labels=labels, usage=np.array(["PrivateTest"] * len(labels)))
    out = tmp_path / "m.tflite"
    fails("convert", models / "small.keras", "--data", data, "--out", out, mentions="no Training images")
    fails("convert", models / "small.keras", "--data", data, "--calibration", "0", "--out", out,
          mentions="--calibration")
    assert no_output_left(tmp_path)


def test_tflite_is_not_a_conversion_source(models, tmp_path):
    fails("convert", models / "corrupt.tflite", "--out", tmp_path / "m.tflite", mentions="already a TFLite model")


def test_qat_model_exports_only_as_int8(models, tmp_path):
    fails("convert", models / "small_qat.h5", "--float", "--out", tmp_path / "m.tflite", mentions="--float")
    assert no_output_left(tmp_path)


def test_inspect_corrupt_and_missing_tflite(models, tmp_path):
    fails("inspect", models / "corrupt.tflite", mentions=str(models / "corrupt.tflite"))
    fails("inspect", tmp_path / "missing.tflite", mentions="missing.tflite")


def test_edgetpu_plan_cuts_at_first_unsupported_op():
    def op(i, name, dtype="int8"):
        return OpInfo(i, name, [dtype], [dtype])

    tensor = TensorInfo("x", (1, 48, 48, 1), "int8", 1 / 255, -128)
    ops = [op(0, "CONV_2D"), op(1, "RELU"), op(2, "MEAN"), op(3, "LEAKY_RELU"), op(4, "MUL"), op(5, "HARD_SWISH")]
    p = plan(ModelReport(Path("m.tflite"), 0, tensor, tensor, ops, 0))
    assert p.cut_at.name == "LEAKY_RELU" and p.mapped == 3
    assert [o.name for o in p.unsupported] == ["LEAKY_RELU", "HARD_SWISH"]
    assert [o.name for o in p.restricted] == ["MEAN"]
    with_float = plan(ModelReport(Path("m.tflite"), 0, tensor, tensor, [op(0, "CONV_2D"), op(1, "ADD", "float32")], 0))
    assert with_float.cut_at.index == 1  # a float op cannot run on the Edge TPU either
