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

A frame is searched on an image pyramid (see `pyramid.py`) so that faces of `min_face` pixels are
resolved whatever the frame size; candidates from all windows go through one weighted NMS.
The model files ship inside fer-edge (`fer_edge/assets/detectors/`, Apache-2.0, see SOURCE.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.errors import ModelError
from fer_edge.edge_runtime.pyramid import PyramidDetector, PyramidModel, Runner


@dataclass(frozen=True)
class BlazeFaceModel(PyramidModel):
    """A BlazeFace variant: its anchors besides what the search needs."""

    strides: tuple[int, ...] = ()
    interpolated_scale_aspect_ratio: float = 0.0


# BlazeFace boxes span brows to mouth: 0.88 of the side of the FER2013-style crop (measured on
# FER2013 faces pasted into frames). Short-range is fully convolutional; full-range upsamples to
# fixed sizes, so it runs on fixed 192x192 tiles.
SHORT_RANGE = BlazeFaceModel("face_detection_short_range.tflite", 128, 0.5, 0.7, (32.0, 112.0), True, 0.88,
                             strides=(8, 16, 16, 16), interpolated_scale_aspect_ratio=1.0)
FULL_RANGE = BlazeFaceModel("face_detection_full_range.tflite", 192, 0.6, 0.6, (40.0, 128.0), False, 0.88,
                            strides=(4,))


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


class BlazeFaceDetector(PyramidDetector):
    """BlazeFace on an image pyramid, with implausible boxes rejected."""

    model: BlazeFaceModel

    def _check_model(self, interpreter) -> None:
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        shape = tuple(int(d) for d in inputs[0]["shape"][1:]) if inputs else ()
        expected = (self.model.input, self.model.input, 3)
        if len(inputs) != 1 or shape != expected or len(outputs) != 2:
            raise ModelError(f"{self._path} takes input {shape} and gives {len(outputs)} output(s), not the {expected} "
                             f"input and 2 outputs (boxes, scores) of {self.model.file}")

    def _runner_for(self, interpreter, index: int, shape: tuple[int, int]) -> Runner:
        outputs = sorted(interpreter.get_output_details(), key=lambda d: -int(d["shape"][-1]))
        anchors = ssd_anchors(*shape, self.model.strides, self.model.interpolated_scale_aspect_ratio)
        return Runner(interpreter, index, [outputs[0]["index"], outputs[1]["index"]], anchors)

    def _tensor(self, small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        tensor = np.full((1, *shape, 3), -1.0, np.float32)  # zero border (letterbox), as MediaPipe pads
        # The model was trained on RGB: a gray frame is fed as three equal channels, scaled to [-1, 1].
        tensor[0, :small.shape[0], :small.shape[1]] = (small.astype(np.float32) / 127.5 - 1.0)[..., None]
        return tensor

    def _decode(self, runner: Runner, min_score: float):
        regressors, classifiers = (runner.interpreter.get_tensor(i) for i in runner.outputs)
        return decode(regressors[0], classifiers[0, :, 0], runner.grid, min_score)

    def _landmarks(self, keypoints: np.ndarray) -> np.ndarray:
        return keypoints[:, :4]  # eyes, nose tip, mouth centre (then the ear tragions)


class BlazeFaceShortDetector(BlazeFaceDetector):
    """BlazeFace short-range (128x128 input; faces within ~2 m of the camera), run fully convolutionally
    on the whole frame at the scale its pyramid needs."""

    # Measured on FER2013 faces pasted into frames: BlazeFace boxes (brows to mouth) are 0.88 of the
    # face crop's side and centred 0.07 of it too low.
    crop_margin, crop_shift = 0.15, -0.07

    def __init__(self, model_path: str | Path | None = None, **options):
        super().__init__(SHORT_RANGE, model_path, **options)


class BlazeFaceFullDetector(BlazeFaceDetector):
    """BlazeFace full-range (192x192 input; faces within ~5 m), run on 192x192 tiles of a pyramid."""

    crop_margin, crop_shift = 0.15, -0.07

    def __init__(self, model_path: str | Path | None = None, **options):
        super().__init__(FULL_RANGE, model_path, **options)
