"""A fixed face-detector network run over an image pyramid, with implausible boxes rejected.

What the BlazeFace and YuNet detectors share: a frame is searched on the windows `search.py` lays
out so that faces of `min_face` pixels are resolved whatever the frame size; each pyramid level
keeps only the faces of the sizes it resolves; candidates need a face's keypoint geometry; one
weighted NMS merges them across levels; each survivor is looked at again at the model's most
familiar scale, whose score must reach a threshold calibrated on face-free photographs; and of a
face found both whole and in part, one box stays. A
subclass says how pixels go into its input tensor and how its outputs decode.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.detection import DEFAULT_MIN_FACE, Detection, drop_nested, iou, weighted_nms
from fer_edge.edge_runtime.errors import ModelError
from fer_edge.edge_runtime.interpreter import make_interpreter
from fer_edge.edge_runtime.search import Window, search_windows

DETECTOR_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "detectors"


@dataclass(frozen=True)
class PyramidModel:
    """What the search needs to know about a detector network."""

    file: str
    """Model file in DETECTOR_ASSETS."""
    input: int
    """Side of the square input the network was made for (its native size)."""
    min_score: float
    """The network's own candidate threshold (its reference implementation's)."""
    calibrated_score: float
    """Score a candidate must keep when verified (see `PyramidDetector._verify`), calibrated with
    `benchmarks/detection.py --sweep` for <= 0.05 false detections per face-free frame."""
    face_range: tuple[float, float]
    """Face sides, in input-tensor pixels, the model finds reliably (measured with
    `benchmarks/detection.py --face-range`); the search pyramid keeps every face inside it."""
    resizable: bool
    """Whether the graph runs on other input sizes (then each pyramid level is one whole-frame
    window; otherwise levels are tiled with native-size inputs)."""
    box_to_crop: float
    """Side of the model's box over the side of the FER2013-style crop of the same face (in which
    face sizes, `min_face` and the face ranges, are measured); measured on pasted FER2013 faces."""
    multiple: int = 16
    """Resizable inputs are padded to a multiple of this (the network's largest stride)."""


def crop_sides(boxes: np.ndarray, box_to_crop: float) -> np.ndarray:
    """The side of the FER2013-style face crop each (x0, y0, x1, y1) box stands for."""
    return np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None)) / box_to_crop


def plausible(boxes: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Which detections have a face's geometry, from their (N, 4, 2) eyes (subject's right first),
    nose tip and mouth centre: a box near square, those points inside it, eyes apart by a face's
    proportion, and the mouth on the far side of the eye line from the top of a face turned at most
    ~60 degrees. Texture such as windows and bricks can score high but rarely places keypoints like this."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(np.sqrt(np.abs(width * height)), 1e-6)
    aspect = height / np.maximum(width, 1e-6)
    slack = 0.1 * side[:, None]
    inside = ((landmarks[..., 0] >= boxes[:, None, 0] - slack) & (landmarks[..., 0] <= boxes[:, None, 2] + slack)
              & (landmarks[..., 1] >= boxes[:, None, 1] - slack) & (landmarks[..., 1] <= boxes[:, None, 3] + slack)).all(1)
    eyes = landmarks[:, 1] - landmarks[:, 0]
    eye_distance = np.hypot(eyes[:, 0], eyes[:, 1]) / side
    # The mouth lies "below" the eye line in the face's own frame: its offset from the eyes' midpoint
    # has a positive component along the eye line's normal, and that normal points within ~60 degrees
    # of straight down (image y grows downwards).
    normal = np.stack([-eyes[:, 1], eyes[:, 0]], axis=1) / np.maximum(np.hypot(eyes[:, 0], eyes[:, 1]), 1e-6)[:, None]
    normal *= np.sign(normal[:, 1:2] + 1e-9)
    mouth = ((landmarks[:, 3] - (landmarks[:, 0] + landmarks[:, 1]) / 2) * normal).sum(1) / side
    return (aspect > 0.6) & (aspect < 1.6) & inside & (eye_distance > 0.2) & (eye_distance < 0.75) & (mouth > 0.15) & (
        normal[:, 1] > 0.5)


@dataclass
class Runner:
    """An interpreter allocated for one input shape, with what decoding that shape needs."""

    interpreter: object
    input: int
    outputs: list
    """Output tensor indices (or groups of them), in the order the subclass's `_decode` expects."""
    grid: object
    """The subclass's per-shape decoding constants (anchors, priors)."""


class PyramidDetector:
    """A detector network on an image pyramid. Subclasses give `_check_model`, `_runner_for`,
    `_tensor`, `_decode` and `_landmarks`."""

    NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold; merges one face seen at several levels

    def __init__(self, model: PyramidModel, model_path: str | Path | None = None, min_score: float | None = None,
                 min_face: int = DEFAULT_MIN_FACE, num_threads: int | None = 1, check_keypoints: bool = True, verify: bool = True):
        path = Path(model_path) if model_path else DETECTOR_ASSETS / model.file
        self.model, self.min_face, self.check_keypoints, self.verify = model, min_face, check_keypoints, verify
        self.min_score = model.calibrated_score if min_score is None else min_score
        self._path, self._threads = path, num_threads
        # One interpreter per input shape: re-allocating tensors on every shape change costs more
        # than the inference (a frame's pyramid levels all have different shapes).
        self._runners: dict[tuple[int, int], Runner] = {}
        self._runner((model.input, model.input))

    def _check_model(self, interpreter) -> None:
        """Raise ModelError when the file's inputs and outputs are not those of this model."""
        raise NotImplementedError

    def _runner(self, shape: tuple[int, int]) -> Runner:
        if shape not in self._runners:
            interpreter = make_interpreter(self._path, self._threads)
            if not self._runners:  # the first: is the file this detector's model at all?
                self._check_model(interpreter)
            details = interpreter.get_input_details()[0]
            index = details["index"]
            if tuple(details["shape"][1:3]) != shape:
                interpreter.resize_tensor_input(index, [1, *shape, int(details["shape"][-1])])
            try:
                interpreter.allocate_tensors()
            except RuntimeError as error:
                raise ModelError(f"{self._path} cannot run on a {shape[1]}x{shape[0]} input: {error}") from error
            self._runners[shape] = self._runner_for(interpreter, index, shape)
        return self._runners[shape]

    def _runner_for(self, interpreter, index: int, shape: tuple[int, int]) -> Runner:
        raise NotImplementedError

    def _tensor(self, small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The (1, h, w, c) input for gray pixels `small`, placed top-left, the rest padding."""
        raise NotImplementedError

    def _decode(self, runner: Runner, min_score: float):
        """Boxes (x0, y0, x1, y1), scores and keypoints (N, K, 2), in input pixels, scoring >= min_score."""
        raise NotImplementedError

    def _landmarks(self, keypoints: np.ndarray) -> np.ndarray:
        """(N, 4, 2): eyes (subject's right first), nose tip and mouth centre from the keypoints."""
        raise NotImplementedError

    def _run(self, gray: np.ndarray, window: Window, min_score: float):
        """Candidates (boxes, scores, keypoints) in frame pixels from one window of the frame."""
        import cv2

        crop = gray[window.y:window.y + window.height, window.x:window.x + window.width]
        size = (max(1, round(crop.shape[1] * window.scale)), max(1, round(crop.shape[0] * window.scale)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if window.scale < 1 else cv2.INTER_LINEAR)
        shape = (window.tensor_height, window.tensor_width)
        runner = self._runner(shape)
        runner.interpreter.set_tensor(runner.input, self._tensor(small, shape))
        runner.interpreter.invoke()
        boxes, scores, keypoints = self._decode(runner, min_score)
        # Input pixels -> frame pixels (the crop was scaled by `window.scale` in each direction).
        offset = np.array([window.x, window.y], np.float32)
        boxes = boxes / window.scale + np.tile(offset, 2)
        return boxes, scores, keypoints / window.scale + offset

    def detect(self, gray: np.ndarray) -> list[Detection]:
        windows = search_windows(gray.shape[0], gray.shape[1], self.model.input, self.model.face_range,
                                 self.min_face, self.model.resizable, self.model.multiple)
        found = [self._in_range(*self._run(gray, window, self.model.min_score), window.scale) for window in windows]
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        keypoints = np.concatenate([f[2] for f in found])
        keep = crop_sides(boxes, self.model.box_to_crop) >= self.min_face * 0.75
        if self.check_keypoints:
            keep &= plausible(boxes, self._landmarks(keypoints))
        candidates = weighted_nms(boxes[keep], scores[keep], keypoints[keep], self.NMS_IOU)
        if self.verify:
            candidates = [replace(d, score=self._verify(gray, d)) for d in candidates]
        return drop_nested([d for d in candidates if d.score >= self.min_score])

    def _in_range(self, boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, scale: float):
        """Only the candidates a pyramid level is responsible for: faces whose side in the model's
        input lies within its face range. A face too large for the input makes the model fire on
        parts of it (an eye and brow as a small face); the coarser level that sees it whole keeps it."""
        side = crop_sides(boxes, self.model.box_to_crop) * scale
        lo, hi = self.model.face_range
        keep = (side >= 0.7 * lo) & (side <= 1.15 * hi)
        return boxes[keep], scores[keep], keypoints[keep]

    def _verify(self, gray: np.ndarray, detection: Detection) -> float:
        """The model's score for a candidate seen again at its most familiar scale: a square around
        it, fed at the native input size, in which the face spans the geometric middle of the face
        range (~60 of 128 px for BlazeFace short-range). Textures that fire at one pyramid level
        rarely keep a face's score there; faces do."""
        x, y, w, h = detection.box
        size = self.model.input
        side = max(2, round(max(w, h) * size / np.sqrt(self.model.face_range[0] * self.model.face_range[1])))
        x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
        # Out-of-frame parts are padded with zeros, as the letterbox of a window is.
        crop = np.zeros((side, side), np.uint8)
        fx0, fy0 = max(0, x0), max(0, y0)
        fx1, fy1 = min(gray.shape[1], x0 + side), min(gray.shape[0], y0 + side)
        crop[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = gray[fy0:fy1, fx0:fx1]
        boxes, scores, _ = self._run(crop, Window(0, 0, side, side, size / side, size, size), self.model.min_score)
        centre = np.array([side / 2 - w / 2, side / 2 - h / 2, side / 2 + w / 2, side / 2 + h / 2], np.float32)
        same = iou(centre, boxes) > self.NMS_IOU if len(boxes) else np.zeros(0, bool)
        return float(scores[same].max()) if same.any() else 0.0
