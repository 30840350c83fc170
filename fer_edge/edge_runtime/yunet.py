"""YuNet (libfacedetection's face detector), shipped as a TFLite file and run with LiteRT.

`face_detection_yunet.tflite` is libfacedetection's published YuNet weights rebuilt as an int8 TFLite
graph by `fer_edge/convert/yunet.py` (BSD-3-Clause, see `fer_edge/assets/detectors/SOURCE.md`).
YuNet was trained on WIDER FACE, crowds of small faces included: it resolves faces from ~10 px of
its input, which lets a frame be searched at half its size or less where BlazeFace short-range
needs it enlarged. It decodes as libfacedetection's `facedetectcnn-model.cpp`: anchor-free, one
prior per cell of strides 8, 16 and 32 at the cell's corner; score = sqrt(sigmoid(class) *
sigmoid(objectness)); box centre = prior + offset * stride, side = exp(log size) * stride; five
keypoints (eyes, nose tip, mouth corners) = prior + offset * stride. The image is fed as raw 0-255
gray values, zero-padded to a multiple of 32.

A YuNet ONNX file (e.g. opencv_zoo's `face_detection_yunet_2023mar.onnx`) given with
`--detector-model` runs in OpenCV's `cv2.FaceDetectorYN` instead (`OpenCVYuNetDetector`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.detection import DEFAULT_MIN_FACE, Detection
from fer_edge.edge_runtime.errors import ModelError
from fer_edge.edge_runtime.pyramid import PyramidDetector, PyramidModel, Runner

STRIDES = (8, 16, 32)
HEAD_CHANNELS = (2, 4, 10)
"""Channels of the three output maps a stride: class and objectness logits, box, keypoints."""
# libfacedetection's own candidate threshold is 0.2 (facedetectcnn-model.cpp); the box proportion is
# measured on FER2013 faces pasted into frames, the face range on real faces too (benchmarks/detection.py
# --face-range): real (LFW) faces are found 0.63 of the time at 32 px of its input, 0.88 at 40 and 0.92
# at 48, so the finest level enlarges a min_face face to 40 px (32 found 0.71-0.84 of real 24-39 px faces).
# Its scores fall on heads tilted past ~15 degrees (benchmarks/upright.py): the frame is also searched
# turned by 30 degrees each way. Faces found only so must score 0.8: on benchmarks/detection.py's
# face-free images the extra views' textures scored 0.74-0.83 (0.825 on a box below tilt_min_face,
# now left out); 95% of the tilted FER2013 faces they add score 0.8 or more.
YUNET = PyramidModel("face_detection_yunet.tflite", 160, 0.2, 0.7, (40.0, 280.0), True, 0.92, multiple=32,
                     tilts=(-30.0, 30.0), turned_score=0.8)


class YuNetDetector(PyramidDetector):
    """YuNet on the whole frame at the scale `min_face` needs (and coarser levels for faces larger
    than its range), with implausible boxes rejected and a second look at each face."""

    # The longer side of a YuNet box (forehead to chin) is 1.02 of a FER2013 crop's, centred 0.007
    # of it too low (benchmarks/detection.py --face-range), yet the emotion model agrees best with a
    # crop ~9% tighter: margins -0.12 to 0.03 on 600 PublicTest faces at 0 and +-15 degrees
    # (benchmarks/upright.py --detector yunet --split PublicTest --margin=...) gave agreement with the
    # model's label for the original face of 0.771 / 0.775 / 0.765 / 0.756 / 0.75 at -0.12 / -0.09 /
    # -0.06 / -0.03 / 0 (align on, mean over the angles).
    crop_margin, crop_shift = -0.09, 0.0

    def __init__(self, model_path: str | Path | None = None, **options):
        super().__init__(YUNET, model_path, **options)

    def _check_model(self, interpreter) -> None:
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        channels = int(inputs[0]["shape"][-1]) if len(inputs) == 1 else 0
        maps = sorted(int(d["shape"][-1]) for d in outputs)
        if channels != 1 or maps != sorted(HEAD_CHANNELS * len(STRIDES)):
            raise ModelError(f"{self._path} has {len(inputs)} input(s) of {channels} channel(s) and {len(outputs)} "
                             f"output(s), not the one gray input and the 2-, 4- and 10-channel maps a stride of "
                             f"YuNet's {self.model.file} (a YuNet ONNX file needs the .onnx suffix)")

    def _runner_for(self, interpreter, index: int, shape: tuple[int, int]) -> Runner:
        # Output indices grouped by head (scores, boxes, keypoints); each group's strides are told
        # apart by map size once run (a dynamic-shape graph reports output shapes only then).
        details = interpreter.get_output_details()
        outputs = [[d["index"] for d in details if int(d["shape"][-1]) == c] for c in HEAD_CHANNELS]
        priors = []
        for stride in STRIDES:
            ys, xs = np.mgrid[0:shape[0] // stride, 0:shape[1] // stride]
            priors.append((np.stack([xs, ys], -1).reshape(-1, 2) * stride).astype(np.float32))
        return Runner(interpreter, index, outputs, priors)

    def _tensor(self, small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        tensor = np.zeros((1, *shape, 1), np.float32)
        tensor[0, :small.shape[0], :small.shape[1], 0] = small
        return tensor

    def _decode(self, runner: Runner, min_score: float):
        boxes, scores, keypoints = [], [], []
        # Finest map (stride 8) first in each head's group.
        heads = [sorted((runner.interpreter.get_tensor(i) for i in group), key=lambda m: -m.size)
                 for group in runner.outputs]
        for logits, box, kps, priors, stride in zip(*heads, runner.grid, STRIDES):
            logits = np.clip(logits.reshape(-1, 2), -88.0, 88.0)
            score = np.sqrt(1.0 / (1.0 + np.exp(-logits[:, 0])) / (1.0 + np.exp(-logits[:, 1])))
            keep = score >= min_score
            box, kps, prior = box.reshape(-1, 4)[keep], kps.reshape(-1, 10)[keep], priors[keep]
            centre, side = prior + box[:, 0:2] * stride, np.exp(np.clip(box[:, 2:4], -10, 10)) * stride
            boxes.append(np.concatenate([centre - side / 2, centre + side / 2], axis=1))
            scores.append(score[keep])
            keypoints.append(prior[:, None, :] + kps.reshape(-1, 5, 2) * stride)
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(keypoints)

    def _landmarks(self, keypoints: np.ndarray) -> np.ndarray:
        # Eyes, nose tip, and the mouth's centre between its two corners.
        return np.concatenate([keypoints[:, :3], keypoints[:, 3:5].mean(1, keepdims=True)], axis=1)


class OpenCVYuNetDetector:
    """OpenCV's `cv2.FaceDetectorYN` on a YuNet ONNX file you give (e.g. opencv_zoo's
    `face_detection_yunet_2023mar.onnx`, MIT)."""

    # YuNet boxes span forehead to chin, close to a FER2013 crop.
    crop_margin, crop_shift = 0.0, 0.0
    SMALLEST = 10
    """Smallest face side, in its input pixels, YuNet's finest anchors (stride 8) are made for."""

    def __init__(self, model_path: str | Path, min_face: int = DEFAULT_MIN_FACE, min_score: float = 0.8,
                 num_threads: int | None = None):
        import cv2

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


def create_yunet(model_path: str | Path | None = None, **options):
    """YuNet: the shipped TFLite file (or a TFLite file you give) with LiteRT, or an ONNX file with OpenCV."""
    if model_path is not None and Path(model_path).suffix.lower() == ".onnx":
        return OpenCVYuNetDetector(model_path, **options)
    return YuNetDetector(model_path, **options)
