"""Create a TFLite interpreter on the CPU or on a Coral Edge TPU, whichever runtime is installed.

LiteRT (`ai-edge-litert`) is preferred; `tflite-runtime` and TensorFlow's `tf.lite` are
fallbacks, imported only when the former is missing so a device never needs TensorFlow.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import warnings
from pathlib import Path

from fer_edge.edge_runtime.errors import EdgeTpuUnavailableError, ModelError, RuntimeMissingError

DEVICES = ("cpu", "edgetpu", "edgetpu:usb", "edgetpu:pci")
MAX_THREADS = 64
"""More interpreter threads than this is a typo: tens of thousands crash the process when it runs out
of threads (XNNPACK and OpenBLAS start them all), and no board has that many cores."""

# File names of the Edge TPU runtime library (Coral's `libedgetpu`) per operating system.
EDGETPU_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


@contextlib.contextmanager
def reading_model(path: str | Path, doing: str = "load"):
    """Turn what a runtime raises on a malformed flatbuffer into one ModelError naming the file.

    The C++ checks raise ValueError or RuntimeError (often several lines); tensor and op names are
    decoded on access, so a damaged name raises UnicodeDecodeError; damaged tensor indices and
    shapes surface as IndexError or KeyError in the details the runtime returns.
    """
    try:
        yield
    except (ValueError, RuntimeError, IndexError, KeyError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ModelError(f"cannot {doing} model {path}: {reason}") from None


def _runtime():
    """Return (Interpreter, load_delegate) from the first TFLite runtime that imports."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate
    except ImportError:
        pass
    else:
        return Interpreter, load_delegate
    try:  # the old runtime, for hosts where LiteRT has no wheel
        from tflite_runtime.interpreter import Interpreter, load_delegate
    except ImportError:
        raise RuntimeMissingError(
            "no TFLite runtime found: install one with `pip install 'fer-edge[edge]'` (ai-edge-litert)"
        ) from None
    return Interpreter, load_delegate


def _edgetpu_delegate(device: str, load_delegate):
    """Load the Edge TPU delegate for `edgetpu`, `edgetpu:usb` or `edgetpu:pci`."""
    library = EDGETPU_LIBRARIES.get(platform.system(), EDGETPU_LIBRARIES["Linux"])
    _, _, kind = device.partition(":")
    options = {"device": kind} if kind else {}
    try:
        # Loaded here first: when the library is missing, the runtime's Delegate is left half-built and
        # its __del__ prints a traceback after our one-line error.
        ctypes.CDLL(library)
        return load_delegate(library, options)
    except (ValueError, OSError, RuntimeError) as error:
        raise EdgeTpuUnavailableError(
            f"cannot use the Edge TPU ({device}): {library} failed to load or found no device "
            f"({str(error).strip() or type(error).__name__}); install Coral's libedgetpu and plug in "
            "the accelerator, or run with device 'cpu' / fallback to CPU"
        ) from error


def make_interpreter(model_path: str | Path, num_threads: int | None = None, device: str = "cpu",
                     fallback_cpu: bool = False):
    """Return an interpreter for `model_path`, not yet allocated (callers may resize inputs first).

    `num_threads=None` uses every CPU core. `device` is one of DEVICES; when the Edge TPU cannot be
    used, `fallback_cpu=True` warns and runs on the CPU instead of raising EdgeTpuUnavailableError.
    A missing or unreadable model raises ModelError.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if num_threads is not None and not 1 <= num_threads <= MAX_THREADS:
        raise ModelError(f"threads (--threads, the daemon's model.threads): {num_threads} is not within 1-{MAX_THREADS}")
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: is a folder, expected a .tflite file" if model_path.is_dir()
                         else f"{model_path}: not a regular file (a fifo or device), expected a .tflite file"
                         if model_path.exists() else f"model file not found: {model_path}")
    Interpreter, load_delegate = _runtime()
    delegates = []
    if device != "cpu":
        try:
            delegates.append(_edgetpu_delegate(device, load_delegate))
        except EdgeTpuUnavailableError as error:
            if not fallback_cpu:
                raise
            warnings.warn(f"{error}; falling back to the CPU", RuntimeWarning, stacklevel=2)
    with reading_model(model_path):
        return Interpreter(model_path=str(model_path), num_threads=num_threads or os.cpu_count(),
                           experimental_delegates=delegates or None)
