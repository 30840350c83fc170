"""Frame in, faces with emotions out: detect faces, crop them like FER2013, classify them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_edge import spec
from fer_edge.edge_runtime.classifier import ClassifierOptions, EmotionClassifier
from fer_edge.edge_runtime.detection import (DEFAULT_DETECTOR, DEFAULT_MIN_FACE, Detection, FaceDetector, create_detector,
                                             eye_angle, unmatched)


@dataclass
class PipelineOptions:
    """How frames are searched for faces and how faces are cropped."""

    detector: str = DEFAULT_DETECTOR
    """Detector created when none is passed to the pipeline (see `detection.DETECTORS`)."""

    detector_model: str | Path | None = None
    """Model file of that detector; None uses the one installed with its package."""

    detect_every: int = 1
    """Run the detector on every Nth frame and carry its boxes over to the frames in between."""

    search_every: int = 1
    """Search the whole frame on every Nth detection; the detections in between only find the faces
    already found again, each in a view around its last place (one small invoke a face, with the
    `yunet` and `blazeface-*` detectors; others search the whole frame each time). A face a whole
    search misses is still looked for where it was; when a face is lost in between, the whole frame
    is searched at once and on the next detections until as many faces are found again (at most
    `search_every` times). A new face waits for the next whole search: up to
    `detect_every * search_every` frames (`benchmarks/video_detection.py`). Above 1, the detector's
    turned searches (yunet) take turns, one view a whole search: a new tilted head may wait one
    whole search more; known ones are followed turned upright."""

    margin: float | None = None
    """Crop margin as a fraction of the box side; None uses the detector's own `crop_margin`."""

    min_face: int = DEFAULT_MIN_FACE
    """Smallest face to find, in pixels of the original frame (side of a FER2013-like crop). The
    detector searches each frame at the resolutions that resolve faces this small and no finer:
    a larger value is cheaper. Below ~24 px a face has too few pixels for the 48x48 classifier."""

    turned_search: bool = True
    """Also search each frame turned both ways for tilted heads, where the detector does so (yunet:
    +-30 degrees, for faces of 64 px or more). It found 532-541 of 600 FER2013 faces tilted 30
    degrees where the upright search alone found 219-282, for 1.6x the detection CPU
    (`benchmarks/upright.py`, `benchmarks/detection.py`). Off: upright search only, cheaper."""

    align: bool = True
    """Turn each face upright before it is cropped, by the angle of its eye line (FER2013's faces
    are upright). Needs a detector that gives eye keypoints (BlazeFace, YuNet); Haar faces are
    cropped as they are. On by default: on FER2013 faces tilted 30 degrees it lifted accuracy from
    57% to 70%, on upright ones it changed it by -0.3 points, for ~0.1 ms a face
    (`benchmarks/upright.py`)."""

    max_frame_pixels: int | None = 50_000_000
    """Largest frame accepted, in pixels (width x height); readers skip larger images, videos and
    streams before decoding them (see `sources.read_frames`). A frame costs about 6 bytes a pixel
    while it is decoded, processed and annotated (measured: `predict --annotate` on an 8000x6000 JPEG
    peaks at 371 MB resident, on a 1000x750 one at 95 MB), so the default keeps one photo under
    ~400 MB, within a 1 GB Raspberry Pi. None: no cap."""


@dataclass
class FaceResult:
    """One face and its emotion."""

    box: tuple[int, int, int, int]
    """(x, y, width, height) of the detected face in frame pixels."""

    score: float
    """Detector confidence."""

    label: str
    """Most probable emotion."""

    probabilities: np.ndarray
    """Probability per class, in `class_names` order."""

    class_names: tuple[str, ...] = spec.CLASS_NAMES

    def to_dict(self) -> dict:
        return {"label": self.label, "box": [int(v) for v in self.box], "score": round(float(self.score), 4),
                "probabilities": {name: round(float(p), 4) for name, p in zip(self.class_names, self.probabilities)}}


@dataclass
class FrameResult:
    """Everything found in one frame."""

    faces: list[FaceResult]
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Milliseconds spent on `detect`, `preprocess`, `classify` and in `total`."""

    def to_dict(self) -> dict:
        return {"faces": [face.to_dict() for face in self.faces],
                "timings_ms": {stage: round(ms, 3) for stage, ms in self.timings_ms.items()}}


def _square(box: tuple[int, int, int, int], margin: float, shift: float) -> tuple[int, int, int]:
    """Top-left corner and side (x0, y0, side) of the square around a box, grown by `margin` of its
    side, its centre moved down by `shift` of the side; not clamped to any image."""
    x, y, w, h = box
    side = max(1, round(max(w, h) * (1 + margin)))
    return round(x + w / 2 - side / 2), round(y + h / 2 + shift * max(w, h) - side / 2), side


def square_crop(box: tuple[int, int, int, int], margin: float, shift: float,
                shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Square (x0, y0, x1, y1) around a box (see `_square`), moved and clamped into the image.

    FER2013 faces are tight square crops; a square keeps the aspect ratio the model was trained on.
    """
    x0, y0, side = _square(box, margin, shift)
    height, width = shape[:2]
    # Shift the square inside the image before clamping, so faces at an edge stay square when they can.
    x0, y0 = max(0, min(x0, width - side)), max(0, min(y0, height - side))
    return x0, y0, min(width, x0 + side), min(height, y0 + side)


def face_crop(gray: np.ndarray, detection: Detection, margin: float, shift: float, align: bool) -> np.ndarray:
    """The FER2013-like square crop of a detection (see `square_crop`). With `align` and eye
    keypoints, the face is first turned upright about its box centre, and the square (its `shift`
    now along the upright face) is sampled from the rotated frame; only the crop's own pixels are
    computed, and beyond the frame's edges they repeat its border."""
    if not align or len(detection.keypoints) < 2:
        x0, y0, x1, y1 = square_crop(detection.box, margin, shift, gray.shape)
        return gray[y0:y1, x0:x1]
    import cv2

    x, y, w, h = detection.box
    x0, y0, side = _square(detection.box, margin, shift)
    matrix = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), eye_angle(detection.keypoints), 1.0)
    matrix[:, 2] -= (x0, y0)  # the square's corner, in the upright frame, to the output's origin
    return cv2.warpAffine(gray, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class EmotionPipeline:
    """Runs detection and classification on a stream of frames; one instance per stream."""

    def __init__(self, classifier: EmotionClassifier, detector: FaceDetector | None = None,
                 options: PipelineOptions | None = None):
        self.options = options or PipelineOptions()
        self.classifier = classifier
        self.detector = detector or create_detector(self.options.detector, self.options.detector_model,
                                                    turned_search=self.options.turned_search,
                                                    min_face=self.options.min_face)
        self.margin = self.detector.crop_margin if self.options.margin is None else self.options.margin
        self.reset()

    @classmethod
    def create(cls, classifier: ClassifierOptions, options: PipelineOptions | None = None) -> "EmotionPipeline":
        """The one builder `predict`, `demo` and the daemon use: the classifier's interpreter and the
        detector are created once, for the pipeline's lifetime."""
        return cls(EmotionClassifier(classifier), options=options)

    def reset(self) -> None:
        """Forget carried-over boxes, e.g. before a new video."""
        self._frame_index = self._follows_left = self._hunting = self._wanted = self._searches = 0
        self._detections: list[Detection] = []

    def _find_faces(self, gray: np.ndarray) -> list[Detection]:
        """This detection's faces: a whole search on every `search_every`-th detection, the known
        faces followed in between (see `PipelineOptions.search_every`)."""
        follow = getattr(self.detector, "follow", None)  # detectors that can find known faces cheaply
        if follow is None:
            return self.detector.detect(gray)
        every, followed = max(1, self.options.search_every), None
        if self._follows_left > 0 and not self._hunting:
            self._follows_left -= 1
            followed = follow(gray, self._detections)
            if len(followed) == len(self._detections):
                return followed
            # A face was lost (it moved far, turned or left): search the whole frame from now on,
            # until as many faces are found again, for at most `search_every` detections.
            self._hunting, self._wanted = every, len(self._detections)
        found = self._search(gray, every)
        if followed is None:  # a face the whole search misses is still looked for where it was
            lost = unmatched(self._detections, found)
            followed = follow(gray, lost) if lost else []
        faces = found + unmatched(followed, found)
        self._hunting = 0 if len(faces) >= self._wanted else max(0, self._hunting - 1)
        self._follows_left = every - 1
        return faces

    def _search(self, gray: np.ndarray, every: int) -> list[Detection]:
        """A whole search. When known faces are followed between searches (`search_every` > 1), the
        turned searches take turns, one view a search: a known tilted face is followed turned
        upright by its eye line, so only a new one waits, for at most a search more; a search for
        a lost face runs them all."""
        tilts = getattr(self.detector, "tilts", ())
        self._searches += 1
        if every > 1 and len(tilts) > 1 and not self._hunting:
            return self.detector.detect(gray, tilts=(tilts[self._searches % len(tilts)],))
        return self.detector.detect(gray)

    def process(self, frame: np.ndarray) -> FrameResult:
        """Find the faces in a BGR or gray frame and classify their emotions."""
        start = time.perf_counter()
        gray = spec.to_gray(frame)
        converted = time.perf_counter()
        if self._frame_index % max(1, self.options.detect_every) == 0:
            self._detections = self._find_faces(gray)
        self._frame_index += 1
        detected = time.perf_counter()
        crops = []
        for detection in self._detections:
            crop = face_crop(gray, detection, self.margin, self.detector.crop_shift, self.options.align)
            crops.append(spec.resize_face(crop))
        cropped = time.perf_counter()
        probabilities = self.classifier.classify(np.stack(crops) if crops else [])
        done = time.perf_counter()
        names = self.classifier.class_names
        faces = [FaceResult(d.box, d.score, names[int(np.argmax(p))], p, names)
                 for d, p in zip(self._detections, probabilities)]
        ms = lambda seconds: seconds * 1000.0  # noqa: E731
        return FrameResult(faces, {"detect": ms(detected - converted), "preprocess": ms(converted - start + cropped - detected),
                                   "classify": ms(done - cropped), "total": ms(done - start)})
