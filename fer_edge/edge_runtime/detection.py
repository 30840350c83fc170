"""Face detectors behind one small interface: `detect(gray) -> list[Detection]`.

- `yunet` (default): libfacedetection's YuNet (trained on WIDER FACE, crowds of small faces
  included), rebuilt as an int8 TFLite file that ships with fer-edge (see `yunet.py`), run fully
  convolutionally over an image pyramid (see `pyramid.py`), so it finds distant faces too. Chosen
  on the benchmarks: as many faces or more than `blazeface-short` on `benchmarks/detection.py`, the
  face in every frame of `benchmarks/edge_latency.py`'s videos where `blazeface-short` found it in
  70-75%. Its own scores fall on tilted heads, so it also searches the frame turned 30 degrees
  each way (`pyramid.py`) for faces of 64 px or more, for 1.6x its CPU: still a third of `blazeface-short`'s,
  and it finds more tilted faces than that (`benchmarks/upright.py`). A YuNet ONNX file you give
  runs in OpenCV's `cv2.FaceDetectorYN` instead.
- `blazeface-short`: MediaPipe's BlazeFace short-range, on the same pyramid. Its crops suit the
  emotion model slightly better on tilted faces, for ~3x the CPU.
- `blazeface-full`: BlazeFace full-range (made for faces within ~5 m in one 192x192 view), tiled
  over the same pyramid; its graph takes only 192x192 inputs, so tiles make it costly.
- `haar`: OpenCV's bundled frontal-face Haar cascade (no model file; slow on large frames).

Every detector finds faces of `min_face` pixels or more whatever the frame size. The BlazeFace and
YuNet models ship inside the package; nothing is downloaded at run time.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

DEFAULT_DETECTOR = "yunet"
DEFAULT_MIN_FACE = 24
"""Smallest face, in frame pixels, detectors are set to find unless told otherwise."""
SMALLEST_MIN_FACE = 8
"""The least `min_face` accepted (predict, the daemon): below it a face has no features to find,
and the finest search level grows without bound."""


@dataclass(frozen=True)
class Detection:
    """A face found in an image."""

    box: tuple[int, int, int, int]
    """(x, y, width, height) in pixels of the image given to the detector."""

    score: float
    """Detector confidence in [0, 1] (Haar cascades give none: always 1.0)."""

    keypoints: tuple[tuple[float, float], ...] = ()
    """Landmarks in image pixels when the detector gives them: BlazeFace's six are the eyes, nose
    tip, mouth centre and the two ear tragions (the subject's right eye first); YuNet's five are the
    eyes, nose tip and mouth corners."""


class FaceDetector(Protocol):
    """Anything that finds faces in an 8-bit grayscale image. A detector that can find faces it
    knows from an earlier frame more cheaply than by a whole search also has
    `follow(gray, detections) -> list[Detection]` (the pyramid detectors: `pyramid.py`), which
    video pipelines use between whole searches (`PipelineOptions.search_every`)."""

    crop_margin: float
    """Margin, as a fraction of the box side, that turns this detector's box into a FER2013-like crop."""

    crop_shift: float
    """Vertical move of that crop's centre, as a fraction of the box side (positive: down)."""

    def detect(self, gray: np.ndarray) -> list[Detection]: ...


def eye_angle(keypoints: tuple[tuple[float, float], ...]) -> float:
    """Degrees in [-90, 90) from the horizontal to the line through the first two keypoints (the
    eyes); positive when the eye on the image's right lies lower. Either eye may come first."""
    (x0, y0), (x1, y1) = keypoints[:2]
    return (math.degrees(math.atan2(y1 - y0, x1 - x0)) + 90) % 180 - 90


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x0, y0, x1, y1) box with an (N, 4) array of them."""
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def corners(detections: list[Detection]) -> np.ndarray:
    """(N, 4) boxes (x0, y0, x1, y1) of detections."""
    return np.array([[x, y, x + w, y + h] for x, y, w, h in (d.box for d in detections)], np.float32).reshape(-1, 4)


def unmatched(detections: list[Detection], others: list[Detection], threshold: float = 0.3) -> list[Detection]:
    """The detections whose boxes overlap none of `others`' by more than `threshold` IoU."""
    theirs = corners(others)
    return [d for d, box in zip(detections, corners(detections)) if not len(theirs) or iou(box, theirs).max() <= threshold]


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, threshold: float) -> list[Detection]:
    """MediaPipe's weighted NMS ("blending"): candidates overlapping the best remaining one by more
    than `threshold` IoU are averaged by score into one detection. It also merges one face seen in
    several windows or pyramid levels."""
    detections = []
    order = np.argsort(-scores)
    while order.size:
        overlap = iou(boxes[order[0]], boxes[order]) > threshold
        group = order[overlap]
        weights = scores[group, None] / scores[group].sum()
        x0, y0, x1, y1 = (boxes[group] * weights).sum(0)
        points = (keypoints[group] * weights[:, :, None]).sum(0) if keypoints.size else ()
        detections.append(Detection((round(x0), round(y0), round(x1 - x0), round(y1 - y0)), float(scores[order[0]]),
                                    tuple((float(x), float(y)) for x, y in points)))
        order = order[~overlap]
    return detections


def drop_nested(detections: list[Detection], inside: float = 0.6) -> list[Detection]:
    """Of two detections one of which lies mostly (`inside` of its area) within the other, keep the
    higher-scoring: one face seen both whole and in part (its lower half as a small face, or a box
    stretched over the brow) overlaps too little for NMS to merge, and faces do not hold faces."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.score):
        x, y, w, h = d.box
        nested = False
        for k in kept:
            kx, ky, kw, kh = k.box
            overlap = max(0, min(x + w, kx + kw) - max(x, kx)) * max(0, min(y + h, ky + kh) - max(y, ky))
            nested |= overlap >= inside * min(w * h, kw * kh)
        if not nested:
            kept.append(d)
    return kept


# name -> (module, class); imported on use so `fer-edge --help` needs neither OpenCV nor LiteRT.
DETECTORS = {
    "blazeface-full": ("fer_edge.edge_runtime.blazeface", "BlazeFaceFullDetector"),
    "blazeface-short": ("fer_edge.edge_runtime.blazeface", "BlazeFaceShortDetector"),
    "haar": ("fer_edge.edge_runtime.opencv_detectors", "HaarDetector"),
    "yunet": ("fer_edge.edge_runtime.yunet", "create_yunet"),
}


def create_detector(name: str = DEFAULT_DETECTOR, model_path: str | Path | None = None, turned_search: bool = True,
                    **options) -> FaceDetector:
    """Create a detector by name (see DETECTORS); `options` (min_face, num_threads, ...) go to its
    constructor. `turned_search=False` switches off the searches of turned frames of a detector
    that makes them (yunet; see `pyramid.PyramidModel.tilts`); others have none to switch off."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}")
    module, cls = DETECTORS[name]
    detector = getattr(importlib.import_module(module), cls)(model_path, **options)
    if not turned_search and getattr(detector, "tilts", ()):
        detector.tilts = ()
    return detector
