"""The model that ships in the package: its card, its README table, its numbers, the demo."""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import REPO, run_cli
from fer_edge import card as cards
from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

pytestmark = pytest.mark.skipif(not cards.CARD_JSON.is_file() or not SHIPPED_MODEL.is_file(),
                                reason="no model ships in this checkout (fer_edge/models/ is empty)")


@pytest.fixture(scope="module")
def card():
    return cards.load_card()


def test_files_match_the_sha256_in_the_card(card):
    shipped = [entry for entry in card["files"].values() if entry["shipped"]]
    assert [e["file"] for e in shipped][:1] == [SHIPPED_MODEL.name]
    for entry in shipped:
        data = (cards.MODELS_DIR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["size_bytes"] < 8_000_000


def test_readme_results_are_rendered_from_the_card(card):
    readme = (REPO / "README.md").read_text()
    assert cards.readme_results(card) in readme
    assert (cards.MODELS_DIR / "MODEL_CARD.md").read_text() == cards.markdown(card)


def test_shipped_int8_is_fully_integer():
    report = json.loads(run_cli("inspect", SHIPPED_MODEL, "--require-int8", "--json").output)
    assert report["fully_int8"] is True and report["ops"]
    floats = [op["name"] for op in report["ops"] if "float32" in op["input_dtypes"] + op["output_dtypes"]]
    assert not floats, floats
    assert not any(op["name"] in ("QUANTIZE", "DEQUANTIZE") for op in report["ops"])


def test_evaluate_reproduces_the_card(card, fer2013, tmp_path):
    run_cli("evaluate", SHIPPED_MODEL, "--data", fer2013.source, "--split", "PrivateTest", "--out", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    expected = card["results"]["PrivateTest"]["int8"]
    for key in ("accuracy", "f1_weighted", "f1_macro"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-9), key
    assert metrics["leakage_free"]["accuracy"] == pytest.approx(expected["leakage_free"]["accuracy"], abs=1e-9)


def test_demo_finds_the_astronaut_and_writes_an_image(tmp_path):
    out = tmp_path / "demo.jpg"
    text = run_cli("demo", "--out", out).output
    assert "astronaut.jpg: 1 face(s)" in text and "classify" in text
    assert out.stat().st_size > 10_000


def test_a_tampered_shipped_model_is_refused(tmp_path):
    result = run_cli("predict", str(REPO / "fer_edge" / "assets" / "astronaut.jpg"), "--sha256", "0" * 64, expect=1)
    assert "sha256 does not match" in result.output


def test_shipped_int8_maps_every_op_to_the_edge_tpu():
    """One file for the CPU and the Coral: every op of the shipped model is in the Edge TPU's table."""
    report = json.loads(run_cli("inspect", SHIPPED_MODEL, "--target", "edgetpu", "--json").output)
    assert report["edgetpu"]["cut_at"] is None and not report["edgetpu"]["unsupported"]
    assert report["edgetpu"]["mapped"] == len(report["ops"])
