"""Distillation: `train --teacher` trains on soft targets computed once from real teacher runs (or FER+ votes)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import generated_faces, run_cli

from fer_edge.train import run as runs
from fer_edge.train.data import load_dataset
from fer_edge.train.evaluate import load_predictor

FAST = ["--arch", "baseline", "--epochs", "1", "--rotation", "0", "--zoom", "0", "--shift", "0"]


@pytest.fixture(scope="module")
def voted_data(tmp_path_factory):
    """Generated faces with FER+-style votes: most images 8 votes for their label and 2 for
    neutral, every fifth image none at all."""
    images, labels = generated_faces(40)
    usage = np.array(["Training", "Training", "Training", "PublicTest", "PrivateTest"] * len(labels))[:len(labels)]
    to_column = {0: 4, 1: 5, 2: 6, 3: 1, 4: 3, 5: 2, 6: 0}  # FER2013 class -> FER+ column
    votes = np.zeros((len(labels), 10), np.int64)
    for i, label in enumerate(labels):
        if i % 5:
            votes[i, to_column[int(label)]] += 8
            votes[i, 0] += 2
    path = tmp_path_factory.mktemp("voted") / "faces.npz"
    np.savez(path, images=images, labels=labels, usage=usage, ferplus_votes=votes)
    return path


@pytest.fixture(scope="module")
def teacher(voted_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    run_cli("train", "--data", voted_data, *FAST, "--out", out)
    return out


def test_student_trains_on_the_teachers_flip_averaged_probabilities(voted_data, teacher, tmp_path):
    student = tmp_path / "student"
    result = run_cli("train", "--data", voted_data, *FAST, "--teacher", teacher, "--distill", "0.3", "--out", student)
    assert "teacher 1/1" in result.output
    config = json.loads((student / runs.CONFIG).read_text())
    assert config["teachers"] == [str(teacher)] and config["distill"] == 0.3
    ds = load_dataset(voted_data)
    saved = np.load(student / runs.TEACHER_TARGETS)
    train = ds.indices("Training")
    assert np.array_equal(saved["indices"], train)
    expected = load_predictor(str(teacher), tta_flip=True)(ds.images[train])
    np.testing.assert_allclose(saved["probs"], expected, atol=1e-5)
    assert (student / runs.FINAL_METRICS).exists()

    # A resume reads the saved targets and does not run the teachers again.
    extended = run_cli("train", "--resume", "--epochs", "2", "--out", student)
    assert "teacher 1/1" not in extended.output
    assert json.loads((student / runs.STATE).read_text())["epoch"] == 2


def test_qat_of_a_student_trains_on_its_saved_targets_without_the_teachers(voted_data, tmp_path):
    teacher, student, qat = tmp_path / "teacher", tmp_path / "student", tmp_path / "qat"
    run_cli("train", "--data", voted_data, *FAST, "--out", teacher)
    run_cli("train", "--data", voted_data, *FAST, "--teacher", teacher, "--distill", "0.3", "--out", student)
    shutil.rmtree(teacher)  # the QAT run reads the student's targets; the teachers need not exist
    result = run_cli("train", "--qat", "--from", student, "--epochs", "1", "--train-limit", "70", "--out", qat)
    assert "teacher 1/1" not in result.output
    config = json.loads((qat / runs.CONFIG).read_text())
    assert config["teachers"] == [str(teacher)] and config["distill"] == 0.3 and config["qat_from"] == str(student)
    float_targets, qat_targets = np.load(student / runs.TEACHER_TARGETS), np.load(qat / runs.TEACHER_TARGETS)
    assert 0 < len(qat_targets["indices"]) < len(float_targets["indices"])
    rows = np.searchsorted(float_targets["indices"], qat_targets["indices"])
    np.testing.assert_array_equal(float_targets["indices"][rows], qat_targets["indices"])
    np.testing.assert_array_equal(qat_targets["probs"], float_targets["probs"][rows])
    assert (qat / runs.QAT_MODEL).exists()


def test_ferplus_teacher_gives_vote_shares_and_keeps_the_label_without_votes(voted_data, tmp_path):
    student = tmp_path / "student"
    run_cli("train", "--data", voted_data, *FAST, "--teacher", "ferplus", "--out", student)
    ds = load_dataset(voted_data)
    train = ds.indices("Training")
    probs = np.load(student / runs.TEACHER_TARGETS)["probs"]
    labels = ds.labels[train]
    voted = ds.ferplus_votes[train].sum(1) > 0
    neutral = 6
    for row, label, has_votes in zip(probs, labels, voted):
        expected = np.zeros(7)
        if has_votes:
            expected[label] += 0.8
            expected[neutral] += 0.2
        else:
            expected[label] = 1.0
        np.testing.assert_allclose(row, expected, atol=1e-6)


def test_targets_of_other_teachers_are_refused_on_resume(voted_data, teacher, tmp_path):
    student = tmp_path / "student"
    run_cli("train", "--data", voted_data, *FAST, "--teacher", "ferplus", "--out", student)
    np.savez(student / runs.TEACHER_TARGETS, probs=np.zeros((3, 7)), indices=np.arange(3), teachers=np.array(["x"]))
    result = run_cli("train", "--resume", "--epochs", "2", "--out", student, expect=1)
    assert "teacher_targets.npz: made for other teachers" in result.output
    (student / runs.TEACHER_TARGETS).write_bytes(b"not an npz")
    result = run_cli("train", "--resume", "--epochs", "2", "--out", student, expect=1)
    assert "teacher_targets.npz: corrupt teacher targets" in result.output


@pytest.mark.parametrize("args, message", [
    (["--distill", "0.5"], "--distill: needs --teacher"),
    (["--teacher", "no/such/run"], "--teacher: no/such/run does not exist"),
    (["--teacher", "ferplus", "--distill", "1.5"], "--distill: 1.5 is not allowed"),
])
def test_bad_distillation_options_are_one_line(args, message, tmp_path):
    result = run_cli("train", *args, "--out", tmp_path / "run", expect=1)
    assert message in result.output and not (tmp_path / "run").exists()


def test_ferplus_teacher_needs_votes(tmp_path):
    images, labels = generated_faces(30)
    data = tmp_path / "novotes.npz"
    np.savez(data, images=images, labels=labels, usage=np.array(["Training", "PublicTest"] * 105))
    result = run_cli("train", "--data", data, *FAST, "--teacher", "ferplus", "--out", tmp_path / "run", expect=1)
    assert "--teacher ferplus:" in result.output and "has no ferplus_votes" in result.output


def test_evaluate_scores_several_models_as_their_mean(voted_data, teacher, tmp_path):
    from fer_edge.train.evaluate import compute_metrics

    other = tmp_path / "other"
    run_cli("train", "--data", voted_data, *FAST, "--seed", "1", "--out", other)
    ds = load_dataset(voted_data)
    idx = ds.indices("PrivateTest")
    mean = np.mean([load_predictor(str(r))(ds.images[idx]) for r in (teacher, other)], axis=0)
    expected = compute_metrics(ds.labels[idx].astype(np.int64), mean)
    out = run_cli("evaluate", teacher, other, "--data", voted_data, "--out", tmp_path / "eval").output
    assert out.startswith(f"ensemble of 2: PrivateTest: accuracy {expected['accuracy']:.4f}")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["models"] == 2
    refused = run_cli("evaluate", teacher, other, "--data", voted_data, "--calibration", "ferplus", expect=1).output
    assert "--calibration: applies to one .tflite model, not an ensemble" in refused
    missing = run_cli("evaluate", teacher, tmp_path / "no-such-run", "--data", voted_data, expect=1).output
    assert "no-such-run: no such model file or run folder" in missing
