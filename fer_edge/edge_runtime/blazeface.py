"""MediaPipe BlazeFace (short-range and full-range), decoded as MediaPipe's own graphs do.

The decoding follows `mediapipe/modules/face_detection/face_detection.pbtxt` and the per-model
graphs `face_detection_short_range.pbtxt` / `face_detection_full_range.pbtxt`:

- SsdAnchorsCalculator: `fixed_anchor_size: true`, `aspect_ratios: 1.0`, anchor offset 0.5; layers
  that share a stride share one grid, with one anchor per aspect ratio and layer, plus one when
  `interpolated_scale_aspect_ratio` > 0. Short-range: strides 8, 16, 16, 16 and interpolation 1.0
  (16x16 cells x 2 + 8x8 cells x 6 = 896 anchors); full-range: stride 4, no interpolation
  (48x48 cells x 1 = 2304 anchors).
- TensorsToDetectionsCalculator: 16 numbers per anchor with `reverse_output_order: true`, i.e.
  (x centre, y centre, width, height) then 6 keypoints (x, y), all in input-tensor pixels
  (x/y/w/h scale = input size) and relative to the anchor centre; the score is
  sigmoid(clip(logit, +-100)); MediaPipe keeps scores >= 0.5 (short) / 0.6 (full).
- NonMaxSuppressionCalculator: weighted ("blending") NMS at IoU 0.3.
- ImageToTensorCalculator: keep aspect ratio, zero border, pixel values scaled to [-1, 1].

A frame is searched on an image pyramid (see `search.py`) so that faces of `min_face` pixels are
resolved whatever the frame size; candidates from all windows go through one weighted NMS.
The model files ship inside fer-edge (`fer_edge/assets/detectors/`, Apache-2.0, see SOURCE.md).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.detection import DEFAULT_MIN_FACE, Detection, iou, weighted_nms
from fer_edge.edge_runtime.errors import ModelError
from fer_edge.edge_runtime.interpreter import make_interpreter
from fer_edge.edge_runtime.search import Window, search_windows

DETECTOR_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "detectors"


@dataclass(frozen=True)
class BlazeFaceModel:
    """What differs between the BlazeFace variants: file, input size, anchors, measured face range."""

    file: str
    input: int
    """Side of the square input tensor."""
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    min_score: float
    """MediaPipe's own `min_score_thresh` for this model: candidates below it are dropped."""
    calibrated_score: float
    """Score a candidate must keep when verified (see `BlazeFaceDetector._verify`), calibrated with
    `benchmarks/detection.py --sweep` for <= 0.05 false detections per face-free frame."""
    face_range: tuple[float, float]
    """Face sides, in input-tensor pixels, the model finds reliably (measured with
    `benchmarks/detection.py --face-range`); the search pyramid keeps every face inside it."""
    resizable: bool
    """Whether the graph runs on other input sizes (short-range is fully convolutional; full-range
    upsamples to fixed sizes, so it is run on fixed 192x192 tiles)."""


SHORT_RANGE = BlazeFaceModel("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 1.0, 0.5, 0.7, (32.0, 112.0), True)
FULL_RANGE = BlazeFaceModel("face_detection_full_range.tflite", 192, (4,), 0.0, 0.6, 0.6, (40.0, 128.0), False)
# BlazeFace boxes span brows to mouth: 0.88 of the side of the FER2013-style crop that face sizes
# (min_face, the face ranges) are measured in (measured on FER2013 faces pasted into frames).
BOX_TO_CROP = 0.88


def crop_sides(boxes: np.ndarray) -> np.ndarray:
    """The side of the FER2013-style face crop each (x0, y0, x1, y1) box stands for."""
    return np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None)) / BOX_TO_CROP


def ssd_anchors(height: int, width: int, strides: tuple[int, ...], interpolated_scale_aspect_ratio: float) -> np.ndarray:
    """Anchor centres (N, 2) in input pixels, in the order of the model's outputs (SsdAnchorsCalculator)."""
    centres, layer = [], 0
    while layer < len(strides):
        same = layer
        per_cell = 0
        while same < len(strides) and strides[same] == strides[layer]:
            per_cell += 1 + (interpolated_scale_aspect_ratio > 0)  # aspect ratio 1.0 (+ interpolated scale)
            same += 1
        stride = strides[layer]
        rows, cols = -(-height // stride), -(-width // stride)
        ys, xs = np.mgrid[0:rows, 0:cols]
        grid = (np.stack([xs, ys], axis=-1).reshape(-1, 2) + 0.5) * stride
        centres.append(np.repeat(grid, per_cell, axis=0))
        layer = same
    return np.concatenate(centres).astype(np.float32)


def decode(raw: np.ndarray, logits: np.ndarray, anchors: np.ndarray, min_score: float):
    """Boxes (x0, y0, x1, y1), scores and keypoints (N, 6, 2), in input pixels, of anchors >= min_score."""
    # MediaPipe clips logits at 100, which overflows float32 in exp(); 80 gives the same scores.
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))
    keep = scores >= min_score
    raw, centres = raw[keep], anchors[keep]
    centre, size = centres + raw[:, 0:2], raw[:, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    keypoints = centres[:, None, :] + raw[:, 4:16].reshape(-1, 6, 2)
    return boxes, scores[keep], keypoints


def plausible(boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Which detections have a face's geometry: a box near square, both eyes, nose and mouth inside
    it, eyes apart by a face's proportion, and the mouth on the far side of the eye line from the
    top of a face turned at most ~60 degrees. Texture such as windows and bricks scores high on
    BlazeFace but rarely places six keypoints like this."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(np.sqrt(np.abs(width * height)), 1e-6)
    aspect = height / np.maximum(width, 1e-6)
    inner = keypoints[:, :4]  # eyes, nose tip, mouth centre
    slack = 0.1 * side[:, None]
    inside = ((inner[..., 0] >= boxes[:, None, 0] - slack) & (inner[..., 0] <= boxes[:, None, 2] + slack)
              & (inner[..., 1] >= boxes[:, None, 1] - slack) & (inner[..., 1] <= boxes[:, None, 3] + slack)).all(1)
    eyes = inner[:, 1] - inner[:, 0]
    eye_distance = np.hypot(eyes[:, 0], eyes[:, 1]) / side
    # The mouth lies "below" the eye line in the face's own frame: its offset from the eyes' midpoint
    # has a positive component along the eye line's normal, and that normal points within ~60 degrees
    # of straight down (image y grows downwards).
    normal = np.stack([-eyes[:, 1], eyes[:, 0]], axis=1) / np.maximum(np.hypot(eyes[:, 0], eyes[:, 1]), 1e-6)[:, None]
    normal *= np.sign(normal[:, 1:2] + 1e-9)
    mouth = ((inner[:, 3] - (inner[:, 0] + inner[:, 1]) / 2) * normal).sum(1) / side
    return (aspect > 0.6) & (aspect < 1.6) & inside & (eye_distance > 0.2) & (eye_distance < 0.75) & (mouth > 0.15) & (
        normal[:, 1] > 0.5)


@dataclass
class _Runner:
    """An interpreter allocated for one input shape, and that shape's anchors."""

    interpreter: object
    input: int
    regressors: int
    classifiers: int
    anchors: np.ndarray


class BlazeFaceDetector:
    """BlazeFace on an image pyramid, with implausible boxes rejected."""

    NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold

    def __init__(self, model: BlazeFaceModel, model_path: str | Path | None = None, min_score: float | None = None,
                 min_face: int = DEFAULT_MIN_FACE, num_threads: int | None = 1, check_keypoints: bool = True, verify: bool = True):
        path = Path(model_path) if model_path else DETECTOR_ASSETS / model.file
        self.model, self.min_face, self.check_keypoints, self.verify = model, min_face, check_keypoints, verify
        self.min_score = model.calibrated_score if min_score is None else min_score
        self._path, self._threads = path, num_threads
        # One interpreter per input shape: re-allocating tensors on every shape change costs more
        # than the inference (a frame's pyramid levels all have different shapes).
        self._runners: dict[tuple[int, int], _Runner] = {}
        self._runner((model.input, model.input))

    def _runner(self, shape: tuple[int, int]) -> _Runner:
        if shape not in self._runners:
            interpreter = make_interpreter(self._path, self._threads)
            if not self._runners:  # the first, at the model's own size: is it this BlazeFace at all?
                self._check_signature(interpreter)
            index = interpreter.get_input_details()[0]["index"]
            if shape != (self.model.input, self.model.input):
                interpreter.resize_tensor_input(index, [1, *shape, 3])
            interpreter.allocate_tensors()
            outputs = sorted(interpreter.get_output_details(), key=lambda d: -int(d["shape"][-1]))
            anchors = ssd_anchors(*shape, self.model.strides, self.model.interpolated_scale_aspect_ratio)
            self._runners[shape] = _Runner(interpreter, index, outputs[0]["index"], outputs[1]["index"], anchors)
        return self._runners[shape]

    def _check_signature(self, interpreter) -> None:
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        shape = tuple(int(d) for d in inputs[0]["shape"][1:]) if inputs else ()
        expected = (self.model.input, self.model.input, 3)
        if len(inputs) != 1 or shape != expected or len(outputs) != 2:
            raise ModelError(f"{self._path} takes input {shape} and gives {len(outputs)} output(s), not the {expected} "
                             f"input and 2 outputs (boxes, scores) of {self.model.file}")

    def _run(self, gray: np.ndarray, window: Window, min_score: float):
        """Candidates (boxes, scores, keypoints) in frame pixels from one window of the frame."""
        import cv2

        crop = gray[window.y:window.y + window.height, window.x:window.x + window.width]
        size = (max(1, round(crop.shape[1] * window.scale)), max(1, round(crop.shape[0] * window.scale)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if window.scale < 1 else cv2.INTER_LINEAR)
        shape = (window.tensor_height, window.tensor_width)
        runner = self._runner(shape)
        tensor = np.full((*shape, 3), -1.0, np.float32)  # zero border (letterbox), as MediaPipe pads
        # The model was trained on RGB: a gray frame is fed as three equal channels, scaled to [-1, 1].
        tensor[:small.shape[0], :small.shape[1]] = (small.astype(np.float32) / 127.5 - 1.0)[..., None]
        runner.interpreter.set_tensor(runner.input, tensor[None])
        runner.interpreter.invoke()
        boxes, scores, keypoints = decode(runner.interpreter.get_tensor(runner.regressors)[0],
                                          runner.interpreter.get_tensor(runner.classifiers)[0, :, 0],
                                          runner.anchors, min_score)
        # Input pixels -> frame pixels (the crop was scaled by `window.scale` in each direction).
        offset = np.array([window.x, window.y], np.float32)
        boxes = boxes / window.scale + np.tile(offset, 2)
        return boxes, scores, keypoints / window.scale + offset

    def detect(self, gray: np.ndarray) -> list[Detection]:
        windows = search_windows(gray.shape[0], gray.shape[1], self.model.input, self.model.face_range,
                                 self.min_face, self.model.resizable)
        found = [self._in_range(*self._run(gray, window, self.model.min_score), window.scale) for window in windows]
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        keypoints = np.concatenate([f[2] for f in found])
        keep = crop_sides(boxes) >= self.min_face * 0.75
        if self.check_keypoints:
            keep &= plausible(boxes, keypoints)
        candidates = weighted_nms(boxes[keep], scores[keep], keypoints[keep], self.NMS_IOU)
        if not self.verify:
            return [d for d in candidates if d.score >= self.min_score]
        verified = [replace(d, score=self._verify(gray, d)) for d in candidates]
        return [d for d in verified if d.score >= self.min_score]

    def _in_range(self, boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, scale: float):
        """Only the candidates a pyramid level is responsible for: faces whose side in the model's
        input lies within its face range. A face too large for the input makes the model fire on
        parts of it (an eye and brow as a small face); the coarser level that sees it whole keeps it."""
        side = crop_sides(boxes) * scale
        lo, hi = self.model.face_range
        keep = (side >= 0.7 * lo) & (side <= 1.15 * hi)
        return boxes[keep], scores[keep], keypoints[keep]

    def _verify(self, gray: np.ndarray, detection: Detection) -> float:
        """The model's score for a candidate seen again at its most familiar scale: a square around
        it, fed at the native input size, in which the face spans the geometric middle of the face
        range (~60 of 128 px for short-range). Textures that fire at one pyramid level rarely keep a
        face's score there; faces do."""
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


class BlazeFaceShortDetector(BlazeFaceDetector):
    """BlazeFace short-range (128x128 input; faces within ~2 m of the camera), run fully convolutionally
    on the whole frame at the scale its pyramid needs."""

    # Measured on FER2013 faces pasted into frames: BlazeFace boxes (brows to mouth) are BOX_TO_CROP
    # of the face crop's side and centred 0.07 of it too low.
    crop_margin, crop_shift = 0.15, -0.07

    def __init__(self, model_path: str | Path | None = None, **options):
        super().__init__(SHORT_RANGE, model_path, **options)


class BlazeFaceFullDetector(BlazeFaceDetector):
    """BlazeFace full-range (192x192 input; faces within ~5 m), run on 192x192 tiles of a pyramid."""

    crop_margin, crop_shift = 0.15, -0.07

    def __init__(self, model_path: str | Path | None = None, **options):
        super().__init__(FULL_RANGE, model_path, **options)
