"""Face detectors built into OpenCV: the Haar cascade it bundles, and YuNet from an ONNX file you give."""
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


class YuNetDetector:
    """OpenCV's `cv2.FaceDetectorYN` (YuNet, e.g. `face_detection_yunet_2023mar.onnx` from the
    opencv_zoo repository, MIT). No registry package ships the file: pass its path."""

    # YuNet boxes span forehead to chin, close to a FER2013 crop.
    crop_margin, crop_shift = 0.0, 0.0
    SMALLEST = 10
    """Smallest face side, in its input pixels, YuNet's finest anchors (stride 8) are made for."""

    def __init__(self, model_path: str | Path | None = None, min_face: int = DEFAULT_MIN_FACE, min_score: float = 0.8,
                 num_threads: int | None = None):
        import cv2

        if model_path is None:
            raise ModelError("the yunet detector needs its ONNX file: pass --detector-model PATH.onnx")
        if not Path(model_path).is_file():
            raise ModelError(f"YuNet model not found: {model_path}")
        try:
            self._net = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), min_score, 0.3, 5000)
        except cv2.error as error:
            raise ModelError(f"cannot load YuNet model {model_path}: {str(error).strip().splitlines()[-1]}") from error
        self.min_face = min_face

    def detect(self, gray: np.ndarray) -> list[Detection]:
        import cv2

        # YuNet is fully convolutional: one pass over the frame scaled so min_face becomes SMALLEST px.
        scale = min(1.0, self.SMALLEST / self.min_face)
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self._net.detect(cv2.cvtColor(small, cv2.COLOR_GRAY2BGR))
        detections = []
        for face in faces if faces is not None else []:
            x, y, w, h = (float(v) / scale for v in face[:4])
            points = tuple((float(face[4 + 2 * i]) / scale, float(face[5 + 2 * i]) / scale) for i in range(5))
            detections.append(Detection((round(x), round(y), round(w), round(h)), float(face[14]), points))
        return detections
