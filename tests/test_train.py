"""The training side, run through the real verbs: loaders, models, training, resume, evaluation."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import generated_faces, run_cli, write_generated_npz
from fer_edge.spec import CLASS_NAMES


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)
    return path


def good_rows(n_per_split=3):
    images, labels = generated_faces(n_per_split)
    splits = ["Training", "PublicTest", "PrivateTest"]
    return [[int(lab), " ".join(map(str, img.ravel())), splits[i % 3]] for i, (img, lab) in enumerate(zip(images, labels))]


def test_csv_loader_reads_splits_and_counts(tmp_path):
    out = run_cli("data", "inspect", write_csv(tmp_path / "fer.csv", good_rows()), "--json").output
    report = json.loads(out)
    assert report["total"] == 21
    assert sum(s["total"] for s in report["splits"].values()) == 21
    assert report["splits"]["Training"]["per_class"]["angry"] == 1


@pytest.mark.parametrize("row, problem", [
    (["3", "1 2 3", "Training"], "3 pixels, expected 2304"),
    (["3", " ".join(["7"] * 2303 + ["x"]), "Training"], "non-numeric pixel"),
    (["9", " ".join(["7"] * 2304), "Training"], "unknown label '9'"),
    (["3", " ".join(["7"] * 2304), "Validation"], "unknown usage 'Validation'"),
])
def test_csv_bad_row_is_one_clear_line_and_skippable(tmp_path, row, problem):
    rows = good_rows()
    rows.insert(1, row)
    path = write_csv(tmp_path / "bad.csv", rows)
    result = run_cli("data", "inspect", path, expect=1)
    assert f"{path}, row 3: {problem}" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    report = json.loads(run_cli("data", "inspect", path, "--skip-bad", "--json").output)
    assert report["total"] == 21 and "skipped 1 bad entries" in report["notes"]


def test_csv_with_excel_bom_and_upper_case_suffixes_load(tmp_path):
    csv_path = tmp_path / "FER.CSV"
    csv_path.write_text(write_csv(tmp_path / "fer.csv", good_rows()).read_text(), encoding="utf-8-sig")
    npz_path = write_generated_npz(tmp_path / "faces.npz", n_per_class=2).rename(tmp_path / "FACES.NPZ")
    assert json.loads(run_cli("data", "inspect", csv_path, "--json").output)["total"] == 21
    assert json.loads(run_cli("data", "inspect", npz_path, "--json").output)["total"] == 14


@pytest.mark.parametrize("key, arrays", [
    ("usage must be split names (N,)", {"usage": np.array(["Training", "PublicTest", "PrivateTest"]).reshape(3, 1)}),
    ("labels must be integers (N,)", {"labels": np.array([[0, 1, 2]])}),
])
def test_npz_array_of_wrong_shape_is_named(tmp_path, key, arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **{"images": np.zeros((3, 48, 48), np.uint8), "labels": np.array([0, 1, 2]),
                      "usage": np.array(["Training"] * 3), **arrays})
    output = run_cli("data", "inspect", path, expect=1).output
    assert f"{path}: {key}" in output and len(output.strip().splitlines()) == 1


def write_folder(root, prefixed=True):
    images, labels = generated_faces(4)
    for i, (img, label) in enumerate(zip(images, labels)):
        split, prefix = ("train", "Training") if i % 4 < 2 else ("test", "PublicTest" if i % 4 == 2 else "PrivateTest")
        folder = root / split / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / (f"{prefix}_{i}.png" if prefixed else f"{i}.png")), img)
    return root


def test_folder_loader_takes_split_from_prefixes(tmp_path):
    from fer_edge.train.data import load_dataset

    ds = load_dataset(write_folder(tmp_path / "fer"))
    assert {s: int((ds.usage == s).sum()) for s in ("Training", "PublicTest", "PrivateTest")} == {
        "Training": 14, "PublicTest": 7, "PrivateTest": 7}
    assert not ds.notes
    img = cv2.imread(str(next((tmp_path / "fer" / "train" / "angry").iterdir())), cv2.IMREAD_GRAYSCALE)
    assert any(np.array_equal(img, x) for x in ds.images)


def test_folder_without_prefixes_carves_a_validation_split(tmp_path):
    from fer_edge.train.data import load_dataset

    ds = load_dataset(write_folder(tmp_path / "fer", prefixed=False), val_fraction=0.25)
    assert (ds.usage == "PublicTest").sum() > 0 and (ds.usage == "PrivateTest").sum() == 14
    assert "carved" in ds.notes[0]


def test_folder_errors_name_the_path(tmp_path):
    root = write_folder(tmp_path / "fer")
    bad = root / "train" / "angry" / "Training_broken.jpg"
    bad.write_bytes(b"not a jpeg")
    assert f"{bad}: unreadable image" in run_cli("data", "inspect", root, expect=1).output
    assert "skipped 1 bad entries" in run_cli("data", "inspect", root, "--skip-bad").output
    bad.unlink()
    (root / "train" / "contempt").mkdir()
    assert "unknown class folder 'contempt'" in run_cli("data", "inspect", root, expect=1).output


def test_missing_data_is_a_clear_error(tmp_path):
    out = run_cli("data", "inspect", tmp_path / "nope.npz", expect=1).output
    assert "nope.npz: no such file or folder" in out


def test_inspect_fer2013_matches_published_counts(fer2013):
    from fer_edge.train.data import describe

    report = describe(fer2013)
    assert [report["splits"][s]["total"] for s in ("Training", "PublicTest", "PrivateTest")] == [28709, 3589, 3589]
    assert report["splits"]["Training"]["per_class"]["disgust"] == 436
    assert report["blank_images"] == {"Training": 12, "PublicTest": 1, "PrivateTest": 0}
    assert report["duplicates"] == {"PublicTest_in_Training": 280, "PrivateTest_in_Training": 288}


@pytest.mark.parametrize("preset", ["paper", "edge", "edgetpu"])
def test_seresnet_structure(preset):
    from fer_edge.train.models import PRESETS, build_model, count_macs
    from fer_edge.train.tf_setup import tf

    cfg, model = PRESETS[preset], build_model("seresnet", preset)
    se = [layer for layer in model.layers if layer.name.endswith("_se_scale")]
    assert len(se) == sum(cfg.blocks)
    for stage, width in enumerate(cfg.widths, start=1):
        convs = [layer for layer in model.layers if layer.name.startswith(f"stage{stage}_") and layer.name.endswith("_conv")]
        assert convs and all(c.filters == width for c in convs)
    assert any(layer.name.endswith("_proj_conv") for layer in model.layers)
    prefixes = ("image", "stem", "stage", "head", "predictions")
    assert all(layer.name.startswith(prefixes) for layer in model.layers)
    leaky = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.LeakyReLU)]
    assert (not leaky) == (preset == "edgetpu")
    if preset != "paper":
        assert count_macs(model) <= 350e6
    assert model.output_shape == (None, len(CLASS_NAMES))


def test_baseline_is_shallow():
    from fer_edge.train.models import build_model

    model = build_model("baseline")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "Add" not in kinds and "Multiply" not in kinds
    assert sum(k == "Conv2D" for k in (type(layer).__name__ for layer in model.layers)) == 3


def test_models_verb_lists_presets():
    out = run_cli("models").output
    assert "paper" in out and "11,486,647" in out and "baseline" in out


def test_small_training_learns(small_run):
    history = list(csv.DictReader(open(small_run / "history.csv")))
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    final = json.loads((small_run / "final_metrics.json").read_text())
    chance = 1 / len(CLASS_NAMES)
    assert final["PublicTest"]["accuracy"] > chance + 0.12, final
    for name in ("config.json", "curves.png", "best_weights.h5", "eval_PrivateTest/confusion_matrix.png"):
        assert (small_run / name).is_file(), name


def test_evaluate_verb_writes_report(small_run, data_path, tmp_path):
    out = tmp_path / "eval"
    text = run_cli("evaluate", small_run, "--data", data_path, "--split", "PrivateTest", "--out", out, "--tta", "flip").output
    assert "PrivateTest: accuracy" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "f1_weighted", "f1_macro", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) == set(CLASS_NAMES)
    assert (out / "confusion_matrix.png").stat().st_size > 10_000
    assert "macro avg" in (out / "classification_report.txt").read_text()


def test_evaluate_reports_leakage_free_score(small_run, fer2013, tmp_path):
    from fer_edge.train.evaluate import evaluate_split

    metrics = evaluate_split(small_run, fer2013, "PrivateTest")
    assert metrics["leakage_free"]["images"] == 3589 - 288


def test_compare_table(small_run):
    out = run_cli("compare", small_run).output
    assert "| small | seresnet (edge) |" in out


def finished_run_files(run, damage=lambda config, final: None):
    """The two files `compare` reads, as a finished run writes them; `damage` edits them first."""
    run.mkdir()
    config = {"model": "seresnet", "preset": "edge", "qat_from": None, "params": 1000, "macs": 2_000_000}
    final = {"epochs_run": 3, **{s: {"accuracy": 0.5, "f1_weighted": 0.4, "f1_macro": 0.3}
                                 for s in ("PublicTest", "PrivateTest")}}
    damage(config, final)
    (run / "config.json").write_text(json.dumps(config))
    (run / "final_metrics.json").write_text(json.dumps(final))
    return run


@pytest.mark.parametrize("damage, message", [
    (lambda c, f: f.pop("PrivateTest"), "final_metrics.json: missing PrivateTest"),
    (lambda c, f: f["PrivateTest"].update(accuracy="0.5"), "final_metrics.json: PrivateTest.accuracy is '0.5', expected a number"),
    (lambda c, f: c.pop("params"), "config.json: missing params"),
])
def test_compare_names_the_damaged_file_and_key(tmp_path, damage, message):
    good = finished_run_files(tmp_path / "good")
    assert "| good | seresnet (edge) | 1,000 | 2 | 3 | 50.0% | 50.0% | 0.400 | 0.300 |" in run_cli("compare", good).output
    bad = finished_run_files(tmp_path / "bad", damage)
    output = run_cli("compare", good, bad, expect=1).output
    assert f"{bad / message}" in output and len(output.strip().splitlines()) == 1


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_erasing_and_mixup_under_mixed_precision(policy):
    """`--precision auto` is bfloat16 on CPUs with AVX512-BF16: erasing and mixup used to fail there
    with a dtype mismatch in their first batch."""
    from fer_edge.train.augment import augment_batch_fn
    from fer_edge.train.config import AugmentConfig
    from fer_edge.train.tf_setup import tf

    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        apply = augment_batch_fn(AugmentConfig(erasing=1.0, mixup=0.2), seed=0)
        images, labels = apply(tf.random.uniform([4, 48, 48, 1]), tf.one_hot([0, 1, 2, 3], len(CLASS_NAMES)))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert images.shape == (4, 48, 48, 1) and labels.shape == (4, len(CLASS_NAMES))


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--seed", str(2**32)), ("--widths", "16,0,32,64")])
def test_train_refuses_bad_seed_and_widths(tmp_path, flag, value):
    output = run_cli("train", flag, value, "--out", tmp_path / "run", expect=1).output
    assert output.startswith(f"Error: {flag}: ") and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ({"se_ratio": 0}, "overrides.se_ratio: 0 is not allowed"),
    ({"widths": [8, 0, 8, 8]}, "overrides.widths: [8, 0, 8, 8] is not allowed"),
    ({"dropout": 1.5}, "overrides.dropout: 1.5 is not allowed"),
])
def test_run_config_with_invalid_architecture_is_named(tmp_path, override, message):
    run = tmp_path / "run"
    run.mkdir()
    overrides = {"widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1], **override}
    (run / "config.json").write_text(json.dumps({"model": "seresnet", "preset": "edge", "overrides": overrides}))
    (run / "best_weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    data = write_generated_npz(tmp_path / "faces.npz", n_per_class=2)
    output = run_cli("evaluate", run, "--data", data, expect=1).output
    assert f"Error: {run / 'config.json'}: not a valid run configuration ({message}" in output


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "fer_edge", "train", "--data", str(data), "--arch", "baseline",
            "--train-limit", "1500", "--val-limit", "300", "--epochs", "4", "--out", str(out), *extra]


def _history(run):
    return list(csv.DictReader(open(run / "history.csv")))


def test_resume_after_kill_ends_where_an_uninterrupted_run_would(tmp_path):
    data = write_generated_npz(tmp_path / "faces.npz", n_per_class=300)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "killed"
    resume = [sys.executable, "-m", "fer_edge", "train", "--resume", "--out", str(run)]
    proc = subprocess.Popen(_train_cmd(data, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        state = run / "state.json"
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((run / "state.json").read_text())["epoch"]
    assert 1 <= killed_at < 4
    refused = subprocess.run(resume + ["--lr", "0.1"], env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "--lr: a resumed run keeps its config.json" in refused.stderr
    subprocess.run(resume, env=env, check=True, capture_output=True)
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(data, reference), env=env, check=True, capture_output=True)
    resumed, straight = _history(run), _history(reference)
    assert [r["epoch"] for r in resumed] == ["1", "2", "3", "4"]
    # The same images in the same order, and the same optimizer step and schedule position, at
    # every epoch as the uninterrupted run.
    assert [r["order"] for r in resumed] == [r["order"] for r in straight]
    assert [float(r["lr"]) for r in resumed] == pytest.approx([float(r["lr"]) for r in straight], rel=1e-6)
    assert json.loads((run / "final_metrics.json").read_text())["epochs_run"] == 4

    # A kill after epoch 4's checkpoint was saved but before state.json named it: the state still
    # says epoch 3, and resuming must restore epoch 3's checkpoint, not the newer one.
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "epoch": 3, "history": state["history"][:3],
                                                "checkpoint": "ckpt-3"}))
    subprocess.run(resume, env=env, check=True, capture_output=True)
    assert [r["order"] for r in _history(run)] == [r["order"] for r in straight]
    assert float(_history(run)[-1]["lr"]) == pytest.approx(float(straight[-1]["lr"]), rel=1e-6)
    # A state whose checkpoint is gone is refused, not silently replaced by another epoch's.
    (run / "state.json").write_text(json.dumps({**state, "epoch": 2, "history": state["history"][:2]}))
    refused = subprocess.run(resume, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "ckpt-2 is missing" in refused.stderr and "Traceback" not in refused.stderr


def test_distributed_path_on_two_logical_cpus(tmp_path):
    data = write_generated_npz(tmp_path / "faces.npz", n_per_class=100)
    cmd = _train_cmd(data, tmp_path / "mirrored", "--logical-cpus", "2")
    cmd[cmd.index("--epochs") + 1] = "1"
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "mirrored" / "state.json").read_text())["epoch"] == 1
