"""Face identity and smoothing in the daemon: no model, no dataset, no broker needed."""
from dataclasses import dataclass

import numpy as np
import pytest

from fer_edge.edge_runtime.daemon.config import SmoothingConfig
from fer_edge.edge_runtime.daemon.tracking import FaceTracker, iou
from fer_edge.spec import CLASS_NAMES


@dataclass
class Face:
    box: tuple
    probabilities: np.ndarray


def probs(label: str, confidence: float = 0.7) -> np.ndarray:
    p = np.full(len(CLASS_NAMES), (1 - confidence) / (len(CLASS_NAMES) - 1), np.float32)
    p[CLASS_NAMES.index(label)] = confidence
    return p


def run(tracker: FaceTracker, frames: list[list[Face]]) -> list[dict]:
    events = []
    for t, faces in enumerate(frames):
        events += tracker.update(faces, float(t))
    return events


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_moving_faces_keep_their_identity():
    tracker = FaceTracker(SmoothingConfig(min_hits=1), CLASS_NAMES)
    frames = [[Face((10 + 4 * t, 20, 100, 100), probs("happy")), Face((400 - 4 * t, 30, 90, 90), probs("sad"))]
              for t in range(10)]
    events = run(tracker, frames)
    assert [e["type"] for e in events] == ["face_appeared", "face_appeared"]
    faces = tracker.faces()
    assert sorted((f["face_id"], f["label"]) for f in faces) == [(1, "happy"), (2, "sad")]
    assert faces[0]["box"] == [46, 20, 100, 100]
    assert set(faces[0]["probabilities"]) == set(CLASS_NAMES)


@pytest.mark.parametrize("method", ["ema", "vote"])
def test_one_frame_of_another_emotion_does_not_flip_the_label(method):
    tracker = FaceTracker(SmoothingConfig(method=method, alpha=0.3, window=5, min_hits=1), CLASS_NAMES)
    labels = ["happy"] * 6 + ["sad"] + ["happy"] * 3 + ["sad"] * 8
    events = run(tracker, [[Face((50, 50, 100, 100), probs(label))] for label in labels])
    changes = [e for e in events if e["type"] == "emotion_changed"]
    assert len(changes) == 1, changes
    assert (changes[0]["previous"], changes[0]["label"]) == ("happy", "sad")


def test_unconfirmed_faces_are_not_reported_and_lost_faces_are():
    tracker = FaceTracker(SmoothingConfig(min_hits=3, max_missed=2), CLASS_NAMES)
    flash = [[Face((300, 300, 50, 50), probs("fear"))], []]  # a one-frame false detection
    seen = [[Face((10, 10, 80, 80), probs("neutral"))]] * 3
    events = run(tracker, flash + seen + [[]] * 2)
    assert [e["type"] for e in events] == ["face_appeared"]
    assert tracker.faces()[0]["label"] == "neutral"
    events = tracker.update([], 10.0)
    assert [(e["type"], e["label"]) for e in events] == [("face_lost", "neutral")]
    assert tracker.faces() == []


def test_clear_reports_confirmed_faces_lost():
    tracker = FaceTracker(SmoothingConfig(min_hits=1), CLASS_NAMES)
    tracker.update([Face((0, 0, 50, 50), probs("angry"))], 0.0)
    assert [e["type"] for e in tracker.clear()] == ["face_lost"]
    assert tracker.faces() == []
