"""Face detection: BlazeFace and YuNet decoding on known boxes, the search pyramid, small faces in
large frames, face-free photographs, the shipped model files."""
from __future__ import annotations

import hashlib
import re

import cv2
import numpy as np
import pytest

from fer_edge.edge_runtime.blazeface import FULL_RANGE, SHORT_RANGE, ssd_anchors
from fer_edge.edge_runtime.pyramid import DETECTOR_ASSETS
from fer_edge.edge_runtime.detection import Detection, create_detector, drop_nested, eye_angle, iou, unmatched, weighted_nms
from fer_edge.edge_runtime.errors import ModelError
from fer_edge.edge_runtime.interpreter import make_interpreter
from fer_edge.edge_runtime.scenes import background, paste, tilted_frame
from fer_edge.edge_runtime.search import search_windows
from fer_edge.edge_runtime.yunet import YUNET
from fer_edge.edge_runtime.commands import SAMPLE_IMAGE

BLAZEFACE = ["blazeface-short", "blazeface-full"]
PYRAMID = BLAZEFACE + ["yunet"]  # the detectors that ship a model file and search a pyramid
# Hand-labelled FER2013-style square (hairline to chin) of the face in the shipped sample photo.
ASTRONAUT_FACE = np.array([168, 68, 276, 176], float)


def corners(detection) -> np.ndarray:
    x, y, w, h = detection.box
    return np.array([x, y, x + w, y + h], float)


@pytest.fixture(scope="module")
def astronaut():
    return cv2.imread(str(SAMPLE_IMAGE), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def detectors():
    return {name: create_detector(name, num_threads=1) for name in PYRAMID}


@pytest.mark.parametrize("model, shape, count", [(SHORT_RANGE, (128, 128), 896), (FULL_RANGE, (192, 192), 2304),
                                                 (SHORT_RANGE, (256, 384), 3584 * 384 // 256)])
def test_anchors_match_the_model_outputs(model, shape, count):
    anchors = ssd_anchors(*shape, model.strides, model.interpolated_scale_aspect_ratio)
    assert anchors.shape == (count, 2)
    interpreter = make_interpreter(DETECTOR_ASSETS / model.file, 1)
    if shape != (model.input, model.input):
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [1, *shape, 3])
    interpreter.allocate_tensors()
    assert {tuple(d["shape"][1:]) for d in interpreter.get_output_details()} == {(count, 16), (count, 1)}
    # First grid cell's centre, in input pixels: half the first stride.
    assert tuple(anchors[0]) == (model.strides[0] / 2, model.strides[0] / 2)


@pytest.mark.parametrize("name", PYRAMID)
def test_decodes_the_known_face_and_its_keypoints(detectors, astronaut, name):
    found = detectors[name].detect(astronaut)
    assert len(found) == 1
    face = found[0]
    assert iou(ASTRONAUT_FACE, corners(face)[None])[0] >= 0.6
    # BlazeFace: eyes, nose tip, mouth centre, ears; YuNet: eyes, nose tip, mouth corners.
    (right_eye, left_eye, nose, mouth, *_rest) = np.array(face.keypoints)
    # Eyes left and right of the nose, above it; the mouth below it; all inside the labelled face.
    assert right_eye[0] < nose[0] < left_eye[0] and max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
    for x, y in (right_eye, left_eye, nose, mouth):
        assert ASTRONAUT_FACE[0] < x < ASTRONAUT_FACE[2] and ASTRONAUT_FACE[1] < y < ASTRONAUT_FACE[3]


@pytest.mark.parametrize("name", PYRAMID)
def test_finds_small_faces_in_large_frames(detectors, astronaut, name):
    """The astronaut's face (with its surroundings) pasted at 24-40 px into 1280x720 and 1920x1080
    frames at known places: every one is found, where it was put."""
    x0, y0, x1, y1 = ASTRONAUT_FACE.astype(int)
    pad = (x1 - x0) // 3
    patch = astronaut[y0 - pad:y1 + pad, x0 - pad:x1 + pad]
    fraction = (x1 - x0) / patch.shape[0]
    rng = np.random.default_rng(4)
    for width, height, sides in ((1280, 720, (24, 30, 36, 40)), (1920, 1080, (24, 28, 34, 40))):
        frame = background(rng, width, height)
        truth = []
        for i, side in enumerate(sides):
            outer = round(side / fraction)
            x, y = 60 + i * (width - 200) // len(sides), int(rng.integers(20, height - outer - 20))
            paste(frame, patch, x, y, outer, feather=0.15)
            inset = (outer - side) / 2
            truth.append([x + inset, y + inset, x + inset + side, y + inset + side])
        found = np.array([corners(d) for d in detectors[name].detect(frame)]).reshape(-1, 4)
        for box in truth:
            assert len(found) and iou(np.array(box), found).max() >= 0.4, (name, width, box)
        assert len(found) == len(truth)


def test_yunet_finds_real_small_faces_in_large_frames(detectors):
    """Real news-photo faces (scikit-image's LFW subset: 25x25 px, brows to chin) pasted at 24-32 px
    into 1280x720 frames of busy real textures: the default detector's finest level enlarges them to
    40 px, where YuNet finds real faces 0.88 of the time (0.63 at 32 px, the level it had before,
    benchmarks/detection.py --face-range)."""
    skimage_data = pytest.importorskip("skimage.data")
    faces = (skimage_data.lfw_subset()[:100] * 255).round().astype(np.uint8)
    rng = np.random.default_rng(7)
    hits, boxes = 0, 0
    for photo in ("gravel", "brick"):  # face-free CC0 photographs, stretched over the frame
        frame = cv2.resize(getattr(skimage_data, photo)(), (1280, 720), interpolation=cv2.INTER_LINEAR)
        truth = []
        for row in range(4):
            for column in range(6):
                side = int(rng.integers(24, 33))
                x, y = 40 + column * 205 + int(rng.integers(0, 120)), 30 + row * 170 + int(rng.integers(0, 100))
                paste(frame, faces[rng.integers(len(faces))], x, y, side, feather=0.15)
                truth.append(np.array([x, y, x + side, y + side], float))
        found = np.array([corners(d) for d in detectors["yunet"].detect(frame)]).reshape(-1, 4)
        hits += sum(len(found) > 0 and iou(box, found).max() >= 0.4 for box in truth)
        boxes += len(found)
    # 41 found here; the 32 px level found 37.
    assert hits >= 39, f"{hits} of 48 found"
    assert boxes <= 48 + 1


def turned(gray: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The frame turned counter-clockwise by `degrees` about the astronaut's face, and the 2x3 matrix."""
    centre = ((ASTRONAUT_FACE[0] + ASTRONAUT_FACE[2]) / 2, (ASTRONAUT_FACE[1] + ASTRONAUT_FACE[3]) / 2)
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(gray, matrix, (gray.shape[1], gray.shape[0]), borderMode=cv2.BORDER_REPLICATE), matrix


@pytest.mark.parametrize("degrees", [30.0, -30.0])
def test_yunet_turned_search_maps_faces_back_to_the_frame(detectors, astronaut, degrees):
    """Searched turned by -degrees, a face tilted by degrees is upright; its box and keypoints come
    back where the upright photo's face lands in the tilted frame."""
    yunet = detectors["yunet"]
    (upright,) = yunet.detect(astronaut)
    frame, matrix = turned(astronaut, degrees)
    boxes, scores, keypoints = yunet._search_turned(frame, -degrees)
    best = scores.argmax()
    expected = np.array(upright.keypoints) @ matrix[:, :2].T + matrix[:, 2]
    x, y, w, h = upright.box
    centre = np.array([x + w / 2, y + h / 2]) @ matrix[:, :2].T + matrix[:, 2]
    assert scores[best] >= YUNET.calibrated_score
    # 3.4 and 7.0 px of a 95 px face measured; a turn the wrong way would miss by ~50 px.
    assert np.abs(keypoints[best] - expected).max() < 0.1 * w
    assert np.abs((boxes[best, :2] + boxes[best, 2:]) / 2 - centre).max() < 0.1 * w
    assert 0.85 < (boxes[best, 2] - boxes[best, 0]) / w < 1.15


def test_yunet_turned_searches_find_tilted_faces_and_leave_upright_ones_alone(fer2013):
    """FER2013 faces at 120 px in 320x240 frames. Tilted 30 degrees either way, YuNet searching
    upright only finds about 40% of them (its scores fall on tilted heads; benchmarks/upright.py),
    with its turned searches about 90%. Upright, every face the upright search finds keeps exactly
    that detection."""
    rng = np.random.default_rng(0)
    faces = fer2013.images[rng.choice(fer2013.indices("PrivateTest"), 40, replace=False)]
    turning, upright_only = (create_detector("yunet", min_face=64, num_threads=1, tilts=t) for t in (None, ()))
    found = {True: 0, False: 0}
    for index, face in enumerate(faces):
        for degrees in (0.0, 30.0 if index % 2 else -30.0):
            frame, truth = tilted_frame(face, degrees, np.random.default_rng(index))
            hits = {}
            for turned, detector in ((True, turning), (False, upright_only)):
                matched = [d for d in detector.detect(frame) if iou(truth, corners(d)[None])[0] >= 0.4]
                hits[turned] = matched[0] if matched else None
                found[turned] += bool(matched) and degrees != 0
            if degrees == 0 and hits[False] is not None:
                assert hits[True] == hits[False], index
    assert found[True] >= 32 and found[True] >= found[False] + 10, found


def crowd(astronaut: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """A 640x360 frame with the astronaut's face three times in a row, 80 px, 10 px apart, moved by
    (dx, dy); their true squares."""
    x0, y0, x1, y1 = ASTRONAUT_FACE.astype(int)
    pad = (x1 - x0) // 3
    patch = astronaut[y0 - pad:y1 + pad, x0 - pad:x1 + pad]
    outer = round(80 * patch.shape[0] / (x1 - x0))
    frame, truth = background(np.random.default_rng(8), 640, 360), []
    for x in range(100 + dx, 370 + dx, 90):  # each patch's margin covers its neighbour's
        paste(frame, patch, x, 100 + dy, outer, feather=0.15)
        inset = (outer - 80) / 2
        truth.append([x + inset, 100 + dy + inset, x + inset + 80, 100 + dy + inset + 80])
    return frame, np.array(truth)


@pytest.mark.parametrize("name", PYRAMID)
def test_follow_finds_known_faces_where_they_moved(detectors, astronaut, name):
    """Three faces in a row, found by a whole search, then moved by a third of their side: `follow`
    finds each again where it went, not a neighbour (each view holds one or two, which may score
    higher: that lost YuNet the middle face), and drops faces that are gone."""
    detector = detectors[name]
    before, _ = crowd(astronaut, 0, 0)
    known = detector.detect(before)
    assert len(known) == 3
    after, truth = crowd(astronaut, 27, -12)
    followed = np.array([corners(d) for d in detector.follow(after, known)]).reshape(-1, 4)
    assert len(followed) == 3
    for box, found in zip(truth, followed[np.argsort(followed[:, 0])]):
        assert iou(box, found[None])[0] >= 0.5, (name, box, found)
    assert detector.follow(background(np.random.default_rng(9), 640, 360), known) == []


@pytest.mark.parametrize("degrees", [30.0, -30.0])
def test_follow_keeps_a_tilted_face(detectors, astronaut, degrees):
    """A head tilted 30 degrees, which only YuNet's turned searches find, is followed as it moves:
    its view is turned upright by its eye line."""
    yunet = detectors["yunet"]
    frame, matrix = turned(astronaut, degrees)
    (known,) = yunet.detect(frame)
    moved = np.roll(frame, (15, -20), axis=(0, 1))
    (followed,) = yunet.follow(moved, [known])
    assert iou(corners(known) + [-20, 15, -20, 15], corners(followed)[None])[0] >= 0.6
    assert abs(eye_angle(followed.keypoints) - eye_angle(known.keypoints)) < 8


@pytest.mark.parametrize("degrees", [30.0, -30.0])
def test_in_video_the_turned_searches_take_turns(astronaut, degrees):
    """With following (search_every > 1), each whole search runs one turned view, the two in turn;
    a head tilted 30 degrees that appears (only a turned search finds it) is found by the second
    whole search at the latest and followed from then on; a search for a lost face runs both."""
    from fer_edge.edge_runtime import ClassifierOptions, EmotionClassifier, EmotionPipeline, PipelineOptions
    from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

    pipeline = EmotionPipeline(EmotionClassifier(ClassifierOptions(SHIPPED_MODEL, num_threads=1)),
                               options=PipelineOptions(search_every=2))
    searches, detect = [], pipeline.detector.detect
    pipeline.detector.detect = lambda gray, tilts=None: searches.append(tilts) or detect(gray, tilts)
    tilted, blank = turned(astronaut, degrees)[0], np.full_like(astronaut, 128)
    found = [len(pipeline.process(frame).faces) for frame in [blank] * 3 + [tilted] * 6 + [blank] * 2]
    first = found.index(1)
    assert 3 <= first <= 6 and found[first:9] == [1] * (9 - first) and found[9:] == [0, 0], found
    lost = searches.index(None)  # the searches from the face's loss on run every view
    views = searches[:lost]
    assert len(views) >= 4 and all(len(view) == 1 for view in views), searches
    assert all(a != b for a, b in zip(views, views[1:])) and set(searches[lost:]) == {None}, searches


@pytest.mark.parametrize("name", PYRAMID + ["haar"])
def test_no_faces_in_face_free_photographs(detectors, name):
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.util import img_as_ubyte

    detector = detectors.get(name) or create_detector(name)
    photos = [img_as_ubyte(getattr(skimage_data, n)()) for n in ("brick", "grass", "gravel", "rocket", "coffee", "text")]
    frames = [cv2.resize(p if p.ndim == 2 else cv2.cvtColor(p, cv2.COLOR_RGB2GRAY), (640, 480)) for p in photos]
    rng = np.random.default_rng(3)
    frames += [background(rng, 640, 360), rng.integers(0, 256, (360, 640), dtype=np.uint8), np.full((360, 640), 128, np.uint8)]
    found = [len(detector.detect(frame)) for frame in frames]
    # benchmarks/detection.py measures 0-0.2 false detections per busy face-free frame for the
    # calibrated BlazeFace threshold: one in these nine frames is within that, two are not.
    assert sum(found) <= 1, found


@pytest.mark.parametrize("resizable", [True, False])
@pytest.mark.parametrize("height, width", [(480, 640), (720, 1280), (1080, 1920), (200, 300)])
def test_search_windows_resolve_every_face_size(height, width, resizable):
    """Any face from min_face up to half the frame lies whole inside some window, at a scale where
    its side is within the detector's face range."""
    lo, hi = 32.0, 112.0
    windows = search_windows(height, width, 128, (lo, hi), 24, resizable)
    rng = np.random.default_rng(0)
    for _ in range(300):
        side = float(np.exp(rng.uniform(np.log(24), np.log(min(height, width) / 2))))
        x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
        assert any(w.x <= x and w.y <= y and x + side <= w.x + w.width and y + side <= w.y + w.height
                   and lo * 0.999 <= side * w.scale <= hi * 1.001 for w in windows), (side, x, y)


def test_weighted_nms_merges_one_face_seen_twice():
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 140, 140]], np.float32)
    scores = np.array([0.9, 0.6, 0.8], np.float32)
    keypoints = np.zeros((3, 6, 2), np.float32)
    merged = weighted_nms(boxes, scores, keypoints, 0.3)
    assert [d.score for d in merged] == pytest.approx([0.9, 0.8])
    assert merged[0].box == (11, 11, 40, 40)  # score-weighted mean of the two


def test_yunet_onnx_and_foreign_files_are_refused_clearly(tmp_path):
    """An ONNX file goes to OpenCV's FaceDetectorYN; another TFLite file must have YuNet's input."""
    with pytest.raises(ModelError, match="not found"):
        create_detector("yunet", tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="YuNet"):
        create_detector("yunet", DETECTOR_ASSETS / SHORT_RANGE.file)


def test_shipped_models_match_their_provenance():
    source = (DETECTOR_ASSETS / "SOURCE.md").read_text()
    recorded = dict(re.findall(r"`(face_detection_\w+\.tflite)`: `([0-9a-f]{64})`", source))
    assert set(recorded) == {SHORT_RANGE.file, FULL_RANGE.file, YUNET.file}
    for name, digest in recorded.items():
        assert hashlib.sha256((DETECTOR_ASSETS / name).read_bytes()).hexdigest() == digest
    assert "Apache License" in (DETECTOR_ASSETS / "LICENSE-Apache-2.0.txt").read_text()
    assert "3-clause BSD License" in (DETECTOR_ASSETS / "LICENSE-libfacedetection.txt").read_text()


def test_yunet_weights_are_read_from_libfacedetection_source(tmp_path):
    """`fer_edge.convert.yunet` reads the C arrays of facedetectcnn-data.cpp by name; another file is refused."""
    from fer_edge.convert.yunet import read_weights
    from fer_edge.errors import FerEdgeError

    source = tmp_path / "facedetectcnn-data.cpp"
    source.write_text('#include "facedetectcnn.h"\nfloat backbone__model0_pw_weight[2*1] = {0.5f,-1.25f};\n'
                      "float backbone__model0_pw_bias[2] = {1.f,\n  2e-3f};\n")
    arrays = read_weights(source)
    assert arrays["backbone__model0_pw_weight"].tolist() == [0.5, -1.25]
    assert arrays["backbone__model0_pw_bias"] == pytest.approx([1.0, 0.002])
    other = tmp_path / "other.cpp"
    other.write_text("int main() { return 0; }\n")
    with pytest.raises(FerEdgeError, match="other.cpp: no YuNet weight arrays"):
        read_weights(other)


def test_a_face_seen_whole_and_in_part_keeps_one_box():
    whole, lower_half = Detection((100, 100, 160, 200), 0.8), Detection((110, 190, 120, 110), 0.9)
    neighbour = Detection((230, 120, 150, 150), 0.75)  # overlaps `whole` by a fifth of its area: another face
    kept = drop_nested([whole, lower_half, neighbour])
    assert kept == [lower_half, neighbour]
    assert drop_nested([whole, neighbour]) == [whole, neighbour]


def test_unmatched_keeps_detections_that_overlap_none_of_the_others():
    a, b, c = Detection((0, 0, 50, 50), 0.9), Detection((200, 0, 50, 50), 0.9), Detection((5, 5, 50, 50), 0.8)
    assert unmatched([a, b], [c]) == [b]
    assert unmatched([a, b], []) == [a, b] and unmatched([], [a]) == []
