"""A fixed face-detector network run over an image pyramid, with implausible boxes rejected.

What the BlazeFace and YuNet detectors share: a frame is searched on the windows `search.py` lays
out so that faces of `min_face` pixels are resolved whatever the frame size; each pyramid level
keeps only the faces of the sizes it resolves; candidates need a face's keypoint geometry; one
weighted NMS merges them across levels; each survivor is looked at again at the model's most
familiar scale, whose score must reach a threshold calibrated on face-free photographs; and of a
face found both whole and in part, one box stays. A model that misses tilted heads (YuNet) also
searches the frame turned by a few angles, for faces of `tilt_min_face` or more; each face keeps
the detection of the view that scores it best, and its second look is turned upright by its eye
line. A subclass says how pixels go into its input tensor and how its outputs decode.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.detection import DEFAULT_MIN_FACE, Detection, corners, drop_nested, eye_angle, iou, weighted_nms
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
    """Score a candidate must keep when verified (see `PyramidDetector._look`), calibrated with
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
    tilts: tuple[float, ...] = ()
    """Angles, in degrees, the frame is also searched at, turned, for a model whose scores fall on
    tilted heads; each turned search costs about as much as a whole search for faces of `tilt_min_face`."""
    tilt_min_face: int = 64
    """Smallest face, in frame pixels, the turned searches look for."""
    turned_score: float = 0.0
    """Score a face the upright search does not confirm must reach in its best view: more views
    are more chances for a texture, so this is calibrated on face-free photographs on its own."""


def crop_sides(boxes: np.ndarray, box_to_crop: float) -> np.ndarray:
    """The side of the FER2013-style face crop each (x0, y0, x1, y1) box stands for."""
    return np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None)) / box_to_crop


def unmap(boxes: np.ndarray, keypoints: np.ndarray, to_view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1) and keypoints found in a view made with the affine map `to_view`
    (frame pixels -> view pixels: a turn and a scale), back in frame pixels: boxes as axis-aligned
    boxes of their sides about their centres, keypoints exactly."""
    import cv2

    back = cv2.invertAffineTransform(to_view)
    scale = np.sqrt(abs(np.linalg.det(back[:, :2])))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 @ back[:, :2].T + back[:, 2]
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return np.concatenate([centres - half, centres + half], axis=1), (keypoints @ back[:, :2].T + back[:, 2]).astype(np.float32)


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
    UPRIGHT = 10.0
    """Eye-line angle, in degrees, below which the second look leaves the face as it is."""

    def __init__(self, model: PyramidModel, model_path: str | Path | None = None, min_score: float | None = None,
                 min_face: int = DEFAULT_MIN_FACE, num_threads: int | None = 1, check_keypoints: bool = True, verify: bool = True,
                 tilts: tuple[float, ...] | None = None):
        path = Path(model_path) if model_path else DETECTOR_ASSETS / model.file
        self.model, self.min_face, self.check_keypoints, self.verify = model, min_face, check_keypoints, verify
        self.tilts = model.tilts if tilts is None else tuple(tilts)
        """Angles of the turned searches (`PyramidModel.tilts`); () searches upright only, for less CPU."""
        self.min_score = model.calibrated_score if min_score is None else min_score
        self._look_face = float(np.sqrt(model.face_range[0] * model.face_range[1]))
        """Side, in input pixels, a face spans in its second look: the geometric middle of the face range."""
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

    def detect(self, gray: np.ndarray, tilts: tuple[float, ...] | None = None) -> list[Detection]:
        """The faces in `gray`; `tilts`: the turned searches to run this time (default: all of `self.tilts`)."""
        tilts = self.tilts if tilts is None else tilts
        found = self._candidates(*self._search(gray, self.min_face))
        looked = [replace(d, score=self._look(gray, d, 0.0)) for d in found] if self.verify else found
        kept = [d for d in looked if d.score >= self.min_score]
        # A frame narrower than the faces the turned searches look for holds none of them.
        if tilts and min(gray.shape[:2]) >= max(self.min_face, self.model.tilt_min_face):
            # The faces the upright search does not confirm get a second chance: the turned
            # searches' candidates, and a second look turned upright by each candidate's eye line.
            doubtful = [d for d, seen in zip(found, looked) if seen.score < self.min_score]
            for angle in tilts:
                doubtful += self._candidates(*self._search_turned(gray, angle))
            smallest = 0.75 * max(self.min_face, self.model.tilt_min_face)  # as `_candidates` allows for min_face
            doubtful = [d for d, side in zip(doubtful, crop_sides(corners(doubtful), self.model.box_to_crop))
                        if side >= smallest]
            if self.verify:
                doubtful = [replace(d, score=self._look(gray, d, self._upright_turn(d))) for d in doubtful]
            kept = self._add_views(kept, doubtful, max(self.min_score, self.model.turned_score))
        return drop_nested(kept)

    def _add_views(self, kept: list[Detection], doubtful: list[Detection], min_score: float) -> list[Detection]:
        """`kept` and, of the other candidates, the best-scoring one of each face not yet kept, if
        it reaches `min_score`. A face scores highest in the view that shows it nearest
        upright, whose keypoints are best placed too; blending the views would tilt an upright
        face's keypoints and blur its box with a turned search's coarser one."""
        kept = list(kept)
        for d in sorted(doubtful, key=lambda d: -d.score):
            if d.score >= min_score and (
                    not kept or iou(corners([d])[0], corners(kept)).max() <= self.NMS_IOU):
                kept.append(d)
        return kept

    def _upright_turn(self, detection: Detection) -> float:
        """Degrees that turn a tilted candidate upright by its eye line (0 for a level one)."""
        angle = eye_angle(detection.keypoints) if len(detection.keypoints) >= 2 else 0.0
        return angle if abs(angle) >= self.UPRIGHT else 0.0

    def _candidates(self, boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray) -> list[Detection]:
        """Candidates of a face's size and geometry, merged by weighted NMS."""
        keep = crop_sides(boxes, self.model.box_to_crop) >= self.min_face * 0.75
        if self.check_keypoints:
            keep &= plausible(boxes, self._landmarks(keypoints))
        return weighted_nms(boxes[keep], scores[keep], keypoints[keep], self.NMS_IOU)

    def _search(self, gray: np.ndarray, min_face: int):
        """Candidates (boxes, scores, keypoints) in `gray`'s pixels from every pyramid level."""
        windows = search_windows(gray.shape[0], gray.shape[1], self.model.input, self.model.face_range,
                                 min_face, self.model.resizable, self.model.multiple)
        found = [self._in_range(*self._run(gray, window, self.model.min_score), window.scale) for window in windows]
        return tuple(np.concatenate([f[i] for f in found]) for i in range(3))

    def _search_turned(self, gray: np.ndarray, angle: float):
        """Candidates, in frame pixels, from a search of the frame turned by `angle` degrees
        (counter-clockwise) for faces of `tilt_min_face` or more: a head tilted by about `-angle`
        is upright there. Boxes come back as axis-aligned squares of the same size about the
        face's centre; keypoints come back exactly."""
        import cv2

        min_face = max(self.min_face, self.model.tilt_min_face)
        # Shrink first, to the finest scale these faces need, so the turn works on fewer pixels.
        shrink = min(1.0, self.model.face_range[0] / min_face)
        small = cv2.resize(gray, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA) if shrink < 1 else gray
        height, width = small.shape
        turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
        size = (int(np.ceil(width * cos + height * sin)), int(np.ceil(width * sin + height * cos)))
        turn[:, 2] += (size[0] - width) / 2, (size[1] - height) / 2  # the whole frame on the turned canvas
        turned = cv2.warpAffine(small, turn, size, flags=cv2.INTER_LINEAR, borderValue=0)
        boxes, scores, keypoints = self._search(turned, max(1, round(min_face * shrink)))
        turn[:, :2] *= shrink  # frame pixels -> turned pixels
        boxes, keypoints = unmap(boxes, keypoints, turn)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres >= 0).all(1) & (centres[:, 0] < gray.shape[1]) & (centres[:, 1] < gray.shape[0])
        return boxes[inside], scores[inside], keypoints[inside]

    def _in_range(self, boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, scale: float):
        """Only the candidates a pyramid level is responsible for: faces whose side in the model's
        input lies within its face range. A face too large for the input makes the model fire on
        parts of it (an eye and brow as a small face); the coarser level that sees it whole keeps it."""
        side = crop_sides(boxes, self.model.box_to_crop) * scale
        lo, hi = self.model.face_range
        keep = (side >= 0.7 * lo) & (side <= 1.15 * hi)
        return boxes[keep], scores[keep], keypoints[keep]

    def _view(self, gray: np.ndarray, detection: Detection, angle: float, face: float):
        """A square view around `detection`, turned by `angle` degrees (counter-clockwise) about its
        centre, in which its box's longer side spans `face` pixels of the model's native input; and
        the affine map from frame pixels to the view's. Out-of-frame parts are zeros, as the
        letterbox of a window is."""
        import cv2

        x, y, w, h = detection.box
        side = max(2, round(max(w, h) * self.model.input / face))
        turn = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), angle, 1.0)
        turn[:, 2] -= (round(x + w / 2 - side / 2), round(y + h / 2 - side / 2))
        return cv2.warpAffine(gray, turn, (side, side), flags=cv2.INTER_LINEAR, borderValue=0), turn

    def _run_view(self, view: np.ndarray):
        """Candidates (boxes, scores, keypoints), in the view's pixels, from a square view fed at
        the native input size."""
        side, size = view.shape[0], self.model.input
        return self._run(view, Window(0, 0, side, side, size / side, size, size), self.model.min_score)

    def _look(self, gray: np.ndarray, detection: Detection, angle: float) -> float:
        """The second look: the model's score for `detection` seen again at its most familiar
        scale, turned by `angle` degrees (counter-clockwise) about its centre. The view is a square
        around it, fed at the native input size, in which the face spans the geometric middle of
        the face range (~60 of 128 px for BlazeFace short-range); 0 when the model finds no face
        there. Textures that fire at one pyramid level rarely keep a face's score there; faces do."""
        _, _, w, h = detection.box
        view, _ = self._view(gray, detection, angle, self._look_face)
        boxes, scores, _ = self._run_view(view)
        side = view.shape[0]
        centre = np.array([side / 2 - w / 2, side / 2 - h / 2, side / 2 + w / 2, side / 2 + h / 2], np.float32)
        same = iou(centre, boxes) > self.NMS_IOU if len(boxes) else np.zeros(0, bool)
        return float(scores[same].max()) if same.any() else 0.0

    def follow(self, gray: np.ndarray, detections: list[Detection]) -> list[Detection]:
        """The faces of `detections`, found in an earlier frame, found again in `gray`: each in the
        view of its second look around its last place, turned upright by its eye line, where it may
        have moved by about a third of its side and grown or shrunk by half. A face is kept while it
        scores the detector's threshold there; it is dropped when gone. One small invoke a face
        instead of a whole search: new faces wait for the next `detect`."""
        found = []
        for last in detections:
            view, turn = self._view(gray, last, self._upright_turn(last), self._look_face)
            boxes, scores, keypoints = self._run_view(view)
            boxes, keypoints = unmap(boxes, keypoints, turn)
            growth = crop_sides(boxes, 1.0) / np.sqrt(last.box[2] * last.box[3])
            keep = (growth > 2 / 3) & (growth < 1.5) & (scores >= self.min_score)
            if self.check_keypoints:
                keep &= plausible(boxes, self._landmarks(keypoints))
            if keep.any():
                # The face nearest its last place: the view may hold a neighbour that scores higher.
                found.append(min(weighted_nms(boxes[keep], scores[keep], keypoints[keep], self.NMS_IOU),
                                 key=lambda d: np.hypot(d.box[0] + d.box[2] / 2 - last.box[0] - last.box[2] / 2,
                                                        d.box[1] + d.box[3] / 2 - last.box[1] - last.box[3] / 2)))
        # Two faces that met are one now.
        return drop_nested(self._add_views([], found, 0.0))
