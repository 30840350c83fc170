"""OpenCV's Haar cascade face detector (bundled with opencv-python < 5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.detection import DEFAULT_MIN_FACE, Detection
from fer_edge.edge_runtime.errors import ModelError


class HaarDetector:
    """OpenCV's `haarcascade_frontalface_default.xml` (needs opencv < 5, which still bundles it).

    The cascade scans every scale itself; `min_face` is its smallest window, so the frame is never
    shrunk below what finds a face of that size (24 px is the cascade's own window).
    """

    # Measured on FER2013 faces pasted into frames: Haar boxes are 0.98 of the face crop's side
    # and centred 0.03 of it too high.
    crop_margin, crop_shift = 0.0, 0.03

    def __init__(self, model_path: str | Path | None = None, min_face: int = DEFAULT_MIN_FACE, scale_factor: float = 1.1,
                 min_neighbors: int = 5, num_threads: int | None = None):
        import cv2

        if model_path is None:
            if not hasattr(cv2, "data"):
                raise ModelError("this OpenCV has no bundled Haar cascades (removed in 5.0): install opencv<5")
            model_path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        try:
            self._cascade = cv2.CascadeClassifier(str(model_path))
        except (cv2.error, SystemError):  # a file that is not cascade XML fails inside the constructor
            self._cascade = None
        if self._cascade is None or self._cascade.empty():
            raise ModelError(f"cannot load Haar cascade {model_path}: not an OpenCV cascade .xml file")
        self.min_face, self.scale_factor, self.min_neighbors = min_face, scale_factor, min_neighbors

    def detect(self, gray: np.ndarray) -> list[Detection]:
        import cv2

        # The cascade's window is 24 px: frames whose smallest wanted face is larger are shrunk first.
        scale = min(1.0, 24 / self.min_face)
        small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes = self._cascade.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(24, 24))
        return [Detection(tuple(round(v / scale) for v in box), 1.0) for box in boxes]
