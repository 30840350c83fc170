"""Conversion side on a really trained small model: QAT, int8 / float32 export, inspect, benchmark."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, run_cli
from fer_edge import spec
from fer_edge.cli import main


@pytest.fixture(scope="module")
def dataset(data_path):
    from fer_edge.train.data import load_dataset

    return load_dataset(data_path)


@pytest.fixture(scope="module")
def qat_run(small_run, data_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qat") / "small_qat"
    run_cli("train", "--qat", "--from", small_run, "--data", data_path, "--epochs", "1",
            "--train-limit", "1000", "--val-limit", "200", "--out", out)
    return out


@pytest.fixture(scope="module")
def qat_int8_path(qat_run) -> Path:
    out = qat_run / "model_int8.tflite"
    run_cli("convert", qat_run, "--out", out)
    return out


def test_ptq_int8_is_full_integer_with_card(int8_model_path):
    from fer_edge.convert.export import input_maps_raw_pixels
    from fer_edge.convert.inspect import inspect_model

    report = inspect_model(int8_model_path)
    assert report.fully_int8, report.int8_problems()
    assert not {"QUANTIZE", "DEQUANTIZE", "SHAPE", "STRIDED_SLICE", "PACK"} & {op.name for op in report.ops}
    assert report.input.shape == (1, *spec.INPUT_SHAPE)
    # A raw pixel p feeds exactly p - 128: scale 1/255, zero-point -128.
    assert input_maps_raw_pixels(report), report.input
    meta = report.metadata
    assert meta["quantization"] == "ptq-int8" and meta["format"] == spec.CONTRACT
    assert meta["class_names"] == list(spec.CLASS_NAMES)
    assert meta["input_shape"] == [1, 48, 48, 1]
    assert meta["input"] == {"dtype": "int8", "scale": report.input.scale, "zero_point": -128}
    assert meta["output"]["dtype"] == "int8"
    assert meta["preprocessing"] == spec.PREPROCESSING
    assert meta["calibration"]["images"] == 500 and meta["calibration"]["split"] == "Training"
    assert {"name", "version", "source_model"} <= set(meta)
    run_cli("inspect", int8_model_path, "--require-int8")


def test_int8_agrees_with_float_on_real_faces(small_run, int8_model_path, fer2013):
    from fer_edge.convert.benchmark import benchmark
    from fer_edge.train.evaluate import load_predictor, predict_probs

    idx = fer2013.indices("PrivateTest")
    images, labels = fer2013.images[idx], fer2013.labels[idx]
    rows = benchmark([small_run, int8_model_path], images, labels.astype(np.int64), latency_runs=0)
    keras_row, int8_row = rows
    assert keras_row.accuracy > 1 / spec.NUM_CLASSES + 0.05, "the small model should have learned something"
    assert len(np.unique(keras_row.top1)) >= 3, "agreement is only meaningful if the model predicts several classes"
    # This tiny test model's softmax is flat (median top probability ~0.3), so many faces are near-ties
    # that int8's rounding (probabilities move by 0.003-0.007 on average, up to ~0.05 on 1% of faces,
    # over three trainings here) may flip: overall agreement was 0.90-0.96. Faces whose top two classes
    # are more than 0.05 apart (over half of them) agreed on 99.3-100%.
    assert int8_row.agreement >= 0.85, int8_row.to_dict()
    float_probs = predict_probs(load_predictor(small_run), images)
    int8_probs = predict_probs(load_predictor(int8_model_path), images)
    assert np.abs(float_probs - int8_probs).mean() <= 0.02
    top2 = np.sort(float_probs, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 0.05
    assert decided.mean() >= 0.4
    assert np.mean((keras_row.top1 == int8_row.top1)[decided]) >= 0.98


def test_float32_export_fails_the_int8_requirement(float_tflite_path):
    from fer_edge.convert.inspect import inspect_model

    report = inspect_model(float_tflite_path)
    assert report.input.dtype == "float32" and report.input.shape == (1, 48, 48, 1)
    assert report.metadata["quantization"] == "float32"
    out = run_cli("inspect", float_tflite_path, "--require-int8", expect=1).output
    assert "not fully int8" in out and "CONV_2D (float32" in out and str(float_tflite_path) in out


def test_qat_wraps_every_layer_and_the_se_multiply():
    import tensorflow_model_optimization as tfmot

    from fer_edge.train.qat import SEScaleQuantizeConfig, is_qat_model, quantize_for_training
    from fer_edge.train.models import build_model
    from fer_edge.train.tf_setup import tf

    qk = tfmot.quantization.keras
    model = quantize_for_training(build_model("seresnet", "edge", widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1)))
    assert is_qat_model(model)
    inner = [layer for layer in model.layers if not isinstance(layer, tf.keras.layers.InputLayer)]
    unwrapped = [layer.name for layer in inner[1:] if not isinstance(layer, qk.QuantizeWrapper)]
    assert unwrapped == [], unwrapped
    scales = [layer for layer in inner if layer.name.endswith("_se_scale")]
    assert len(scales) == 4
    assert all(isinstance(layer.quantize_config, SEScaleQuantizeConfig) for layer in scales)


def test_qat_export_quantizes_se_multiply(qat_int8_path):
    from fer_edge.convert.export import input_maps_raw_pixels
    from fer_edge.convert.inspect import inspect_model

    report = inspect_model(qat_int8_path)
    assert report.fully_int8, report.int8_problems()
    muls = [op for op in report.ops if op.name == "MUL"]
    assert len(muls) == 4 and all(op.int8 for op in muls)  # one SE gate per residual block
    assert report.metadata["quantization"] == "qat-int8"
    assert input_maps_raw_pixels(report), report.input


def test_qat_models_reload(qat_run, dataset):
    from fer_edge.train.source import load_source
    from fer_edge.train.run import load_run_model

    faces = spec.preprocess_faces(dataset.images[:16])
    whole = load_source(qat_run / "qat_model.h5")
    assert whole.qat and load_source(qat_run).qat
    np.testing.assert_allclose(whole.model.predict(faces, verbose=0), load_run_model(qat_run).predict(faces, verbose=0),
                               atol=1e-6)
    final = json.loads((qat_run / "final_metrics.json").read_text())
    assert {"PublicTest", "PrivateTest"} <= set(final)


def test_qat_run_extends_with_resume_epochs(qat_run, dataset, data_path, tmp_path):
    from fer_edge.errors import FerEdgeError
    from fer_edge.train.trainer import start_qat

    with pytest.raises(FerEdgeError, match="already holds a run"):
        start_qat(json.loads((qat_run / "config.json").read_text())["qat_from"], qat_run, dataset=dataset)
    out = run_cli("train", "--qat", "--from", qat_run, "--out", tmp_path / "x", expect=1).output
    assert "already a QAT run" in out and not (tmp_path / "x").exists()
    out = run_cli("train", "--qat", "--from", qat_run, "--widths", "8,8,8,8", "--out", tmp_path / "y", expect=1).output
    assert "--widths: a QAT run keeps the network" in out
    run = shutil.copytree(qat_run, tmp_path / "longer")
    run_cli("train", "--resume", "--out", run, "--epochs", "2", "--data", data_path)
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 2 and config["extensions"] == [{"after_epoch": 1, "from": 1, "to": 2}]
    state = json.loads((run / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["epochs_run"] == 2 and final["extensions"] == config["extensions"]


def test_benchmark_table_json_and_budget_exit(small_run, float_tflite_path, int8_model_path, data_path, tmp_path, dataset):
    models = [small_run, float_tflite_path, int8_model_path]
    common = ["--data", data_path, "--limit", "300", "--invokes", "5"]
    report = tmp_path / "bench.json"
    out = run_cli("benchmark", *models, *common, "--max-acc-drop", "-100", "--out", report, expect=1).output
    assert "accuracy drop" in out and "--max-acc-drop -100" in out and str(int8_model_path) in out
    result = json.loads(report.read_text())
    assert result["images"] == min(300, len(dataset.indices("PrivateTest"))) and result["reference"] == str(small_run)
    rows = {Path(r["model"]).name: r for r in result["models"]}
    assert rows["model_float32.tflite"]["agreement"] >= 0.99
    assert rows["model_int8.tflite"]["latency_ms"] > 0 and rows["model_int8.tflite"]["size_bytes"] > 0
    assert set(rows["model_int8.tflite"]["recall"]) == set(spec.CLASS_NAMES)
    out = run_cli("benchmark", *models, *common, "--max-f1-drop", "-1", "--max-acc-drop", "100", expect=1).output
    assert "macro F1 drop" in out
    run_cli("benchmark", *models, *common, "--max-acc-drop", "100", "--max-f1-drop", "1")


def test_int8_budget_script_uses_existing_exports(small_run, float_tflite_path, int8_model_path, data_path):
    spec_ = importlib.util.spec_from_file_location("int8_budget", REPO / "benchmarks" / "int8_budget.py")
    script = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(script)
    result = CliRunner().invoke(script.main, ["--run", str(small_run), "--data", str(data_path), "--limit", "200",
                                              "--invokes", "5", "--max-acc-drop", "-100"])
    assert result.exit_code == 1 and "accuracy drop" in result.output, result.output
    assert "building" not in result.output  # the session's exports were reused


def test_edgetpu_plan_cuts_at_leaky_relu(int8_model_path):
    out = run_cli("inspect", int8_model_path, "--target", "edgetpu").output
    # The edge preset's stem is CONV_2D then LEAKY_RELU: the compiler would stop at op 1.
    assert "cut at op 1 LEAKY_RELU" in out and "LEAKY_RELU x" in out


def test_convert_edgetpu_without_compiler_says_how_to_get_it(small_run, tmp_path):
    if shutil.which("edgetpu_compiler"):
        pytest.skip("edgetpu_compiler is installed here")
    out = tmp_path / "tpu.tflite"
    result = CliRunner().invoke(main, ["convert", str(small_run), "--edgetpu", "--out", str(out)],
                                env={"PATH": str(tmp_path)})
    assert result.exit_code == 1
    assert "edgetpu_compiler is not on PATH" in result.output and "apt-get install edgetpu-compiler" in result.output
    assert not out.exists()
