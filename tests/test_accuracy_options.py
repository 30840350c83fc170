"""Accuracy options of the runtime on real models: flip averaging (batch 1 and a batch-2 export),
stored calibrations, and the FER+ scores of `evaluate`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fer_edge.edge_runtime import ClassifierOptions, EmotionClassifier, ModelError
from fer_edge.edge_runtime.calibration import sidecar_path
from fer_edge.edge_runtime.daemon.config import ConfigError, resolve
from fer_edge.train import ferplus


@pytest.fixture(scope="module")
def faces(data_path) -> np.ndarray:
    from fer_edge.train.data import load_dataset

    ds = load_dataset(data_path)
    images = ds.images[ds.indices("PrivateTest")]
    return images[np.random.default_rng(0).permutation(len(images))[:41]]  # odd: a batch-2 model pads the last


@pytest.fixture(scope="module")
def batch2_path(small_run, data_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b2") / "model_int8_b2.tflite"
    run_cli("convert", small_run, "--int8", "--batch", "2", "--data", data_path, "--calibration", "500", "--out", out)
    return out


def counting_invokes(classifier: EmotionClassifier) -> list:
    calls, invoke = [], classifier._interpreter.invoke
    classifier._interpreter.invoke = lambda: (calls.append(1), invoke())[1]
    return calls


def mirrored(faces: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(faces[:, :, ::-1])


@pytest.mark.parametrize("model", ["int8_model_path", "batch2_path"])
def test_flip_is_the_mean_of_the_two_single_passes(model, faces, request):
    path = request.getfixturevalue(model)
    single = EmotionClassifier(ClassifierOptions(path, num_threads=1))
    flip = EmotionClassifier(ClassifierOptions(path, num_threads=1, tta="flip"))
    expected = (single.classify(faces) + single.classify(mirrored(faces))) / 2
    np.testing.assert_allclose(flip.classify(faces), expected, atol=1e-6)
    assert not np.allclose(expected, single.classify(faces), atol=1e-3)  # the mirror image really counts


def test_batch2_export_runs_both_passes_in_one_invoke(int8_model_path, batch2_path, faces):
    from fer_edge.convert.inspect import inspect_model

    report = inspect_model(batch2_path)
    assert report.fully_int8, report.int8_problems()
    assert report.input.shape == (2, 48, 48, 1) and report.metadata["input_shape"] == [2, 48, 48, 1]
    pair = EmotionClassifier(ClassifierOptions(batch2_path, num_threads=1, tta="flip"))
    one = EmotionClassifier(ClassifierOptions(int8_model_path, num_threads=1, tta="flip"))
    pair_calls, one_calls = counting_invokes(pair), counting_invokes(one)
    pair_probs, one_probs = pair.classify(faces), one.classify(faces)
    assert len(pair_calls) == len(faces) and len(one_calls) == 2 * len(faces)
    # Same weights, same calibration faces: the two exports agree up to int8 rounding.
    assert (pair_probs.argmax(1) == one_probs.argmax(1)).mean() >= 0.9
    plain = EmotionClassifier(ClassifierOptions(batch2_path, num_threads=1))
    assert plain.classify(faces[:3]).shape == (3, 7)  # an odd count fills the last pair


def test_unknown_tta_is_refused(int8_model_path):
    with pytest.raises(ValueError, match="tta"):
        EmotionClassifier(ClassifierOptions(int8_model_path, tta="mirror"))
    assert resolve({"model.tta": "flip"}).model.tta == "flip"
    with pytest.raises(ConfigError, match="model.tta"):
        resolve({"model.tta": "mirror"})
    with pytest.raises(ConfigError, match="FER_EDGE_MODEL_TTA"):
        resolve(environ={"FER_EDGE_MODEL_TTA": "both"})


def test_predict_with_flip(int8_model_path):
    from fer_edge.edge_runtime.commands import SAMPLE_IMAGE

    lines = [run_cli("predict", SAMPLE_IMAGE, "--model", int8_model_path, *extra).output
             for extra in ([], ["--tta", "flip"])]
    plain, flip = (json.loads(text.splitlines()[-1])["faces"] for text in lines)
    assert len(plain) == len(flip) >= 1 and plain[0]["box"] == flip[0]["box"]
    assert plain[0]["probabilities"] != flip[0]["probabilities"]
    run_cli("predict", SAMPLE_IMAGE, "--model", int8_model_path, "--tta", "mirror", expect=2)


# ---------------------------------------------------------------- FER+


def test_ferplus_majority_follows_the_ferplus_rule():
    #            neu hap sur sad ang dis fea con unk NF
    votes = np.array([[6, 1, 1, 0, 0, 0, 0, 0, 2, 0],   # neutral 6 of 9 kept votes
                      [1, 0, 0, 5, 4, 0, 0, 0, 0, 0],   # the single neutral vote is dropped: sad 5 of 9
                      [0, 0, 0, 5, 5, 0, 0, 0, 0, 0],   # a tie has no majority
                      [0, 0, 0, 0, 0, 0, 0, 8, 2, 0],   # contempt: no FER2013 class
                      [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face
                      [0] * 10])                         # unaligned image
    assert ferplus.majority_labels(votes).tolist() == [6, 4, -1, -1, -1, -1]
    assert ferplus.neutral_mask(votes).tolist() == [True, False, False, False, False, False]
    shares = ferplus.neutral_shares(np.array([6, 6, 4, 0, 3]))
    assert shares["predicted_neutral"] == 0.4 and shares["predicted_negative"] == 0.4


def test_evaluate_reports_ferplus(int8_model_path, fer2013, tmp_path):
    output = run_cli("evaluate", int8_model_path, "--limit", "700", "--out", tmp_path).output
    assert "FER+ majority" in output and "FER+-neutral faces" in output
    metrics = json.loads((tmp_path / "metrics.json").read_text())["ferplus"]
    assert 0 < metrics["labelled_images"] < 700 and metrics["neutral_faces"]["images"] > 50
    assert 0.2 < metrics["accuracy"] < 1 and sum(metrics["neutral_faces"]["predicted"].values()) == pytest.approx(1)


# ---------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def calibrated(int8_model_path, fer2013, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the small int8 model with calibrations fitted on real FER+ votes beside it."""
    model = tmp_path_factory.mktemp("calibrated") / "model.tflite"
    model.write_bytes(int8_model_path.read_bytes())
    output = run_cli("calibrate", model, "--neutral-target", "0.6").output
    assert "| none |" in output and "| neutral |" in output
    return model, json.loads(sidecar_path(model).read_text())


def test_calibration_is_applied_as_stored(calibrated, faces):
    model, document = calibrated
    entry = document["calibrations"]["ferplus"]
    plain = EmotionClassifier(ClassifierOptions(model, num_threads=1)).classify(faces)
    logits = np.log(np.maximum(plain, 1 / 512)) / entry["temperature"] + np.array(entry["bias"])
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = EmotionClassifier(ClassifierOptions(model, num_threads=1, calibration="ferplus")).classify(faces)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Fitted on PublicTest, measured on PrivateTest: the neutral bias meets its goal where it was fitted.
    neutral = document["calibrations"]["neutral"]
    assert neutral["PublicTest"]["ferplus_neutral_predicted_neutral"] >= 0.6
    assert neutral["PrivateTest"]["ferplus_neutral_predicted_neutral"] > (
        document["uncalibrated"]["PrivateTest"]["ferplus_neutral_predicted_neutral"])


def test_evaluate_with_a_calibration_matches_its_record(calibrated):
    model, document = calibrated
    output = run_cli("evaluate", model, "--calibration", "neutral").output
    recorded = document["calibrations"]["neutral"]["PrivateTest"]
    assert f"accuracy {recorded['accuracy']:.4f}" in output
    assert f"predicted neutral {recorded['ferplus_neutral_predicted_neutral']:.1%}" in output


def test_calibration_belongs_to_its_model(calibrated, float_tflite_path, tmp_path):
    model, _ = calibrated
    with pytest.raises(ModelError, match="not in .*it has: ferplus, neutral"):
        EmotionClassifier(ClassifierOptions(model, calibration="happy"))
    other = tmp_path / "model.tflite"
    other.write_bytes(float_tflite_path.read_bytes())
    sidecar_path(other).write_text(sidecar_path(model).read_text())
    with pytest.raises(ModelError, match="fitted for a model with sha256"):
        EmotionClassifier(ClassifierOptions(other, calibration="ferplus"))
    with pytest.raises(ModelError, match="no model_float32.calibration.json beside"):
        EmotionClassifier(ClassifierOptions(float_tflite_path, calibration="ferplus"))


def test_ferplus_fit_moves_int8_probabilities_toward_the_votes():
    """Probabilities in int8 steps (1/256) whose annotators lean neutral more than the model does:
    the fitted bias favours neutral and lowers the cross-entropy. (Computed in float32, the fit's
    finite differences vanished and it returned bias 0, temperature 1.)"""
    from fer_edge.edge_runtime.calibration import Calibration
    from fer_edge.train.calibrate import fit_ferplus

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (400, 7))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = (np.round(probs * 256) / 256).astype(np.float32)
    shares = probs.astype(np.float64) / probs.sum(1, keepdims=True)
    counts = np.array([rng.multinomial(6, row) for row in shares])  # FER2013 class order
    votes = np.zeros((400, 10), np.int64)
    votes[:, :7] = counts[:, ferplus.TO_FER2013[:7]]  # FER+ column order
    votes[:, ferplus.FERPLUS_COLUMNS.index("neutral")] += 4
    targets, valid = ferplus.distributions(votes)
    fitted = fit_ferplus(probs, votes)
    loss = lambda c: -(targets * c.log_probs(probs[valid])).sum(1).mean()  # noqa: E731
    assert loss(fitted) < loss(Calibration(np.zeros(7))) - 0.01
