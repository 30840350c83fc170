"""`train --init`: a run that starts from a trained model's weights (a run, or a converted .tflite
whose BatchNorm was folded away) computes that model's function before its first step."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL_MODEL_ARGS, run_cli

from fer_edge.train import run as runs
from fer_edge.train.data import load_dataset
from fer_edge.train.evaluate import load_predictor

# One short epoch at a learning rate too small to move a weight: what the run's best weights hold
# is what --init put there (and BatchNorm statistics refreshed on the training images).
STILL = [*SMALL_MODEL_ARGS, "--epochs", "1", "--lr", "1e-9", "--train-limit", "512", "--batch-size", "64"]


def _agreement(data_path, a, b) -> float:
    ds = load_dataset(data_path)
    faces = ds.images[ds.subset("PublicTest", 600, 0)]
    return float((load_predictor(str(a))(faces).argmax(1) == load_predictor(str(b))(faces).argmax(1)).mean())


@pytest.mark.parametrize("source", ["int8", "run"])
def test_a_run_started_from_a_model_computes_that_model(source, small_run, int8_model_path, data_path, tmp_path):
    start = int8_model_path if source == "int8" else small_run
    out = tmp_path / "run"
    result = run_cli("train", "--data", data_path, *STILL, "--init", start, "--out", out)
    assert f"--init: started from the weights of {start}" in result.output
    if source == "int8":  # the folded BatchNorms were rebuilt and checked against the file
        assert "--init: the rebuilt network agrees with" in result.output
    assert json.loads((out / runs.CONFIG).read_text())["init"] == str(start)
    assert _agreement(data_path, out, start) >= 0.9


def test_a_model_of_another_network_is_refused(int8_model_path, data_path, tmp_path):
    result = run_cli("train", "--data", data_path, "--preset", "edgetpu", "--epochs", "1", "--train-limit", "256",
                     "--init", int8_model_path, "--out", tmp_path / "run", expect=1)
    assert f"--init: {int8_model_path} layer stem_conv has shape" in result.output


def test_a_missing_init_is_refused_before_anything_loads(tmp_path):
    result = run_cli("train", "--init", tmp_path / "none.tflite", "--out", tmp_path / "run", expect=1)
    assert f"--init: {tmp_path / 'none.tflite'} does not exist" in result.output and not (tmp_path / "run").exists()


def test_the_shipped_int8_model_rebuilds_to_its_own_accuracy(fer2013):
    """The shipped file's weights, dequantized, with BatchNorm statistics measured on FER2013's
    training faces: the float network scores what the int8 file scores, within a point and a half
    (on 1,000 PrivateTest faces, to keep CI short)."""
    from fer_edge.spec import preprocess_faces
    from fer_edge.train.models import build_model
    from fer_edge.train.warm_start import load_initial_weights
    from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

    model = build_model("seresnet", "edgetpu")
    load_initial_weights(model, str(SHIPPED_MODEL), fer2013.images[fer2013.indices("Training")])
    test = fer2013.subset("PrivateTest", 1000, 0)
    ours = model.predict(preprocess_faces(fer2013.images[test]), batch_size=256, verbose=0).argmax(1)
    theirs = load_predictor(str(SHIPPED_MODEL))(fer2013.images[test]).argmax(1)
    labels = fer2013.labels[test]
    assert abs((ours == labels).mean() - (theirs == labels).mean()) < 0.015
    assert (ours == theirs).mean() > 0.94
