"""Upright crops (`PipelineOptions.align`): a tilted face is cropped as if it were upright, the crop
is the plain square one when there is no tilt, and the option reaches the pipeline from `predict`,
`demo` and the daemon's configuration. The shipped model and detector only: nothing is trained."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fer_edge import spec
from fer_edge.cli import main
from fer_edge.edge_runtime.classifier import SHIPPED_MODEL
from fer_edge.edge_runtime.commands import SAMPLE_IMAGE, demo, predict
from fer_edge.edge_runtime.detection import Detection, create_detector
from fer_edge.edge_runtime.daemon.config import PipelineConfig
from fer_edge.edge_runtime.pipeline import PipelineOptions, eye_angle, face_crop, square_crop
from fer_edge.edge_runtime.scenes import tilted_frame

# LiteRT's Delegate.__del__ raises while tearing down a delegate it failed to build; harmless.
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"no model ships at {SHIPPED_MODEL}")]
FACE_CENTRE = (222.0, 122.0)
"""Centre of the hand-labelled face of the sample photo (see test_detection.py)."""


def tilt(gray: np.ndarray, degrees: float) -> np.ndarray:
    """The frame turned counter-clockwise by `degrees` about the face's centre."""
    matrix = cv2.getRotationMatrix2D(FACE_CENTRE, degrees, 1.0)
    return cv2.warpAffine(gray, matrix, (gray.shape[1], gray.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


@pytest.fixture(scope="module")
def astronaut():
    return cv2.imread(str(SAMPLE_IMAGE), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def detector():
    return create_detector("blazeface-short", num_threads=1)


@pytest.mark.parametrize("degrees", [25.0, -25.0])
def test_a_tilted_face_is_cropped_upright(astronaut, detector, degrees):
    def crop(frame, face, align):
        return face_crop(frame, face, detector.crop_margin, detector.crop_shift, align)

    (upright,) = detector.detect(astronaut)
    reference = spec.resize_face(crop(astronaut, upright, True))
    frame = tilt(astronaut, degrees)
    (face,) = detector.detect(frame)
    # The photo's own head tilt (~6 degrees) plus the frame's turn, which lifts the eye line's right end.
    assert abs(eye_angle(face.keypoints) - (eye_angle(upright.keypoints) - degrees)) < 5
    crops = {align: crop(frame, face, align) for align in (False, True)}
    # Seen again by the detector (with room around it), the upright crop's eyes are level.
    again = detector.detect(cv2.copyMakeBorder(crops[True], 60, 60, 60, 60, cv2.BORDER_REPLICATE))
    assert len(again) == 1 and abs(eye_angle(again[0].keypoints)) < 3
    # And its 48x48 input matches the upright photo's: 0.73-0.86 measured, 0.34-0.36 without align.
    similar = {align: correlation(spec.resize_face(c), reference) for align, c in crops.items()}
    assert similar[True] > 0.65 and similar[True] > similar[False] + 0.25, similar


def test_level_eyes_crop_the_plain_square(astronaut):
    """No tilt, no resampling: the aligned crop is the square crop's pixels exactly."""
    face = Detection((180, 80, 90, 90), 1.0, ((200.0, 110.0), (250.0, 110.0)))
    x0, y0, x1, y1 = square_crop(face.box, 0.15, -0.07, astronaut.shape)
    assert np.array_equal(face_crop(astronaut, face, 0.15, -0.07, True), astronaut[y0:y1, x0:x1])
    assert eye_angle(((250.0, 110.0), (200.0, 130.0))) == eye_angle(((200.0, 130.0), (250.0, 110.0)))


def test_align_reaches_the_pipeline_from_predict_and_demo(astronaut, tmp_path):
    image = tmp_path / "tilted.png"
    # Tilted far enough that the int8 model's probabilities (steps of 1/256) tell the two crops apart.
    cv2.imwrite(str(image), tilt(astronaut, 45.0))
    runs = {}
    for flag in ("--align", "--no-align", None):
        result = CliRunner().invoke(predict, [str(image), "--threads", "1"] + ([flag] if flag else []))
        assert result.exit_code == 0, result.output
        (line,) = [json.loads(text) for text in result.stdout.splitlines() if text.startswith("{")]
        (runs[flag],) = [face["probabilities"] for face in line["faces"]]
    assert runs["--align"] != runs["--no-align"]  # the same box, cropped two ways
    assert runs[None] == runs["--align" if PipelineOptions.align else "--no-align"]  # the dataclass decides
    result = CliRunner().invoke(demo, ["--align", "--threads", "1", "--out", str(tmp_path / "demo.jpg")])
    assert result.exit_code == 0 and "1 face(s)" in result.stdout, result.output


def test_daemon_takes_align_from_flag_file_and_environment(tmp_path):
    source = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    base = ["daemon", "--source", str(source), "--check-config"]
    config = tmp_path / "daemon.toml"
    config.write_text(f"[pipeline]\nalign = {str(not PipelineOptions.align).lower()}\n")
    for args, env, expected in [([], {}, PipelineOptions.align), (["--align"], {}, True), (["--no-align"], {}, False),
                                ([], {"FER_EDGE_PIPELINE_ALIGN": "yes"}, True),
                                (["--config", str(config)], {}, not PipelineOptions.align)]:
        result = CliRunner().invoke(main, base + args, env=env)
        assert result.exit_code == 0, result.output
        assert f"align = {str(expected).lower()}" in result.output, (args, env, result.output)
    result = CliRunner().invoke(main, base, env={"FER_EDGE_PIPELINE_ALIGN": "sideways"})
    assert result.exit_code == 1 and "pipeline.align: expected bool" in result.output


def test_turned_search_reaches_the_detector_from_predict(fer2013, tmp_path):
    """A FER2013 face tilted 30 degrees that YuNet finds only with its turned searches: `predict`
    finds it by default and not with --no-turned-search."""
    turning, upright_only = (create_detector("yunet", num_threads=1, turned_search=t) for t in (True, False))
    assert turning.tilts and upright_only.tilts == ()
    faces = fer2013.images[fer2013.indices("PrivateTest")[:40]]
    frames = (tilted_frame(face, 30.0, np.random.default_rng(index))[0] for index, face in enumerate(faces))
    frame = next(f for f in frames if turning.detect(f) and not upright_only.detect(f))
    image = tmp_path / "tilted.png"
    cv2.imwrite(str(image), frame)
    counts = {}
    for flag in ("--turned-search", "--no-turned-search", None):
        result = CliRunner().invoke(predict, [str(image), "--threads", "1"] + ([flag] if flag else []))
        assert result.exit_code == 0, result.output
        (line,) = [json.loads(text) for text in result.stdout.splitlines() if text.startswith("{")]
        counts[flag] = len(line["faces"])
    assert counts == {"--turned-search": 1, "--no-turned-search": 0, None: 1 if PipelineOptions.turned_search else 0}


@pytest.mark.parametrize("key, flags, value", [("turned_search", ("--turned-search", "--no-turned-search"), "false"),
                                              ("search_every", ("--search-every=2", "--search-every=7"), "3")])
def test_daemon_takes_detection_settings_from_flag_and_file(tmp_path, key, flags, value):
    source = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    config = tmp_path / "daemon.toml"
    config.write_text(f"[pipeline]\n{key} = {value}\n")
    base = ["daemon", "--source", str(source), "--check-config"]
    default = str(getattr(PipelineConfig, key)).lower()
    shown = lambda flag: "false" if flag.startswith("--no-") else "true" if "=" not in flag else flag.split("=")[1]  # noqa: E731
    for args, expected in [([], default), ([flags[1]], shown(flags[1])), (["--config", str(config)], value),
                           (["--config", str(config), flags[0]], shown(flags[0]))]:
        result = CliRunner().invoke(main, base + args)
        assert result.exit_code == 0, result.output
        assert f"{key} = {expected}" in result.output, (args, result.output)
