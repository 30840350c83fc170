"""The interpreter factory: runtimes, Edge TPU delegate absence, unreadable models."""
from __future__ import annotations

import ctypes.util

import numpy as np
import pytest

from fer_edge import spec
from fer_edge.edge_runtime.blazeface import SHORT_RANGE
from fer_edge.edge_runtime.pyramid import DETECTOR_ASSETS
from fer_edge.edge_runtime.errors import EdgeTpuUnavailableError, ModelError
from fer_edge.edge_runtime.interpreter import make_interpreter

# LiteRT's Delegate.__del__ trips over the delegate it failed to build; harmless, so not reported.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

needs_no_edgetpu = pytest.mark.skipif(bool(ctypes.util.find_library("edgetpu")),
                                      reason="an Edge TPU runtime is installed on this machine")


@pytest.fixture(scope="module")
def any_model():
    """A real model that needs no training: the BlazeFace detector shipped with fer-edge."""
    return DETECTOR_ASSETS / SHORT_RANGE.file


def test_cpu_interpreter_runs(any_model):
    interpreter = make_interpreter(any_model, num_threads=1)
    interpreter.allocate_tensors()
    tensor = interpreter.get_input_details()[0]
    interpreter.set_tensor(tensor["index"], np.zeros(tensor["shape"], np.float32))
    interpreter.invoke()


@needs_no_edgetpu
@pytest.mark.parametrize("device", ["edgetpu", "edgetpu:usb", "edgetpu:pci"])
def test_missing_edgetpu_is_a_clear_error(any_model, device):
    with pytest.raises(EdgeTpuUnavailableError, match="libedgetpu") as error:
        make_interpreter(any_model, device=device)
    assert "\n" not in str(error.value)


@needs_no_edgetpu
def test_missing_edgetpu_falls_back_to_cpu(any_model):
    with pytest.warns(RuntimeWarning, match="falling back to the CPU"):
        interpreter = make_interpreter(any_model, device="edgetpu:usb", fallback_cpu=True)
    interpreter.allocate_tensors()
    interpreter.invoke()


def test_unknown_device(any_model):
    with pytest.raises(ValueError, match="unknown device"):
        make_interpreter(any_model, device="gpu")


def test_missing_model(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        make_interpreter(tmp_path / "nope.tflite")


def test_corrupt_model(tmp_path):
    path = tmp_path / "corrupt.tflite"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="cannot load model"):
        make_interpreter(path)


@pytest.mark.parametrize("change, refused", [
    ({"notes": "a key a newer exporter adds"}, None),
    ({"preprocessing": {**spec.PREPROCESSING, "denoise": "none"}}, None),
    ({"format": "fer-edge/1.3"}, None),
    ({"format": "fer-edge/2"}, "newer than this runtime"),
    ({"format": "onnx"}, "unknown metadata format"),
    ({"preprocessing": {**spec.PREPROCESSING, "scale": 1.0}}, "preprocessing scale 1.0"),
    ({"preprocessing": {**spec.PREPROCESSING, "color": "rgb"}}, "preprocessing color 'rgb'"),
    ({"class_names": ["a", "b"]}, "2 classes"),
    ({"class_names": ["a"] * 7}, "repeats a name"),
    ({"class_names": ["", "b", "c", "d", "e", "f", "g"]}, "not a list of names"),
    ({"preprocessing": {**spec.PREPROCESSING, "scale": float("nan")}}, "preprocessing scale nan"),
])
def test_the_model_contract_checks_what_matters(change, refused):
    """Extra keys and minor versions load; a newer major, other numbers or other classes do not."""
    meta = {"format": spec.CONTRACT, "preprocessing": dict(spec.PREPROCESSING), "class_names": list(spec.CLASS_NAMES)}
    problems = spec.contract_problems({**meta, **change})
    assert (problems == []) if refused is None else any(refused in p for p in problems), problems
