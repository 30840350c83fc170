"""Face identity across frames and per-face smoothing, so reported emotions do not flicker.

A face keeps its id while its box overlaps its previous box (greedy IoU matching). Its label is
the argmax of smoothed probabilities (EMA) or the majority of its recent labels (vote); events are
emitted only when that smoothed label changes, a face is confirmed, or a face is lost.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from fer_edge.edge_runtime.daemon.config import SmoothingConfig

Box = tuple[int, int, int, int]


class Face(Protocol):
    """What the tracker needs from one face of a frame (the pipeline's FaceResult has it)."""

    box: Box
    probabilities: np.ndarray


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class EmaSmoother:
    """Exponential moving average of probabilities; the label is its argmax."""

    def __init__(self, options: SmoothingConfig):
        self.alpha = options.alpha
        self.mean: np.ndarray | None = None

    def update(self, probabilities: np.ndarray) -> tuple[np.ndarray, int]:
        self.mean = probabilities if self.mean is None else (
            self.alpha * probabilities + (1.0 - self.alpha) * self.mean)
        return self.mean, int(np.argmax(self.mean))


class VoteSmoother:
    """Majority of the last `window` per-frame labels; a tie keeps the current label."""

    def __init__(self, options: SmoothingConfig):
        self.recent: deque[np.ndarray] = deque(maxlen=options.window)
        self.label: int | None = None

    def update(self, probabilities: np.ndarray) -> tuple[np.ndarray, int]:
        self.recent.append(probabilities)
        counts = Counter(int(np.argmax(p)) for p in self.recent).most_common()
        leaders = {label for label, count in counts if count == counts[0][1]}
        if self.label not in leaders:
            self.label = counts[0][0]
        return np.mean(self.recent, axis=0), self.label


SMOOTHERS = {"ema": EmaSmoother, "vote": VoteSmoother}


@dataclass
class Track:
    """One face followed across frames."""

    id: int
    box: Box
    smoother: EmaSmoother | VoteSmoother
    since: float
    probabilities: np.ndarray | None = None
    label: int = -1
    hits: int = 0
    missed: int = 0
    confirmed: bool = False


class FaceTracker:
    """Matches each frame's faces to known tracks and reports confirmed faces and their changes."""

    def __init__(self, options: SmoothingConfig, class_names: Sequence[str]):
        self.options = options
        self.class_names = tuple(class_names)
        self.tracks: list[Track] = []
        self._next_id = 1

    def _match(self, faces: Sequence[Face]) -> tuple[dict[int, int], list[int]]:
        """Greedy IoU matching: {track index: face index}, and the faces left unmatched."""
        pairs = sorted(((iou(t.box, f.box), ti, fi) for ti, t in enumerate(self.tracks) for fi, f in enumerate(faces)),
                       reverse=True)
        matched: dict[int, int] = {}
        used: set[int] = set()
        for overlap, ti, fi in pairs:
            if overlap < self.options.iou_threshold:
                break
            if ti not in matched and fi not in used:
                matched[ti] = fi
                used.add(fi)
        return matched, [fi for fi in range(len(faces)) if fi not in used]

    def update(self, faces: Sequence[Face], now: float) -> list[dict]:
        """Feed one processed frame; return the events it caused (appeared, emotion changed, lost)."""
        matched, new = self._match(faces)
        events: list[dict] = []
        survivors: list[Track] = []
        for ti, track in enumerate(self.tracks):
            if ti in matched:
                events += self._observe(track, faces[matched[ti]])
                survivors.append(track)
            elif track.missed < self.options.max_missed:
                track.missed += 1
                survivors.append(track)
            elif track.confirmed:
                events.append(self._event("face_lost", track))
        for fi in new:
            track = Track(self._next_id, tuple(faces[fi].box), SMOOTHERS[self.options.method](self.options), now)
            self._next_id += 1
            events += self._observe(track, faces[fi])
            survivors.append(track)
        self.tracks = survivors
        return events

    def clear(self) -> list[dict]:
        """Forget every face (the source was lost); return `face_lost` for the confirmed ones."""
        events = [self._event("face_lost", t) for t in self.tracks if t.confirmed]
        self.tracks = []
        return events

    def _observe(self, track: Track, face: Face) -> list[dict]:
        track.box = tuple(int(v) for v in face.box)
        track.hits += 1
        track.missed = 0
        previous = track.label
        track.probabilities, track.label = track.smoother.update(np.asarray(face.probabilities, np.float32))
        if not track.confirmed:
            if track.hits < self.options.min_hits:
                return []
            track.confirmed = True
            return [self._event("face_appeared", track)]
        if track.label != previous:
            return [self._event("emotion_changed", track, previous=self.class_names[previous])]
        return []

    def _event(self, kind: str, track: Track, **extra) -> dict:
        return {"type": kind, **self.describe(track), **extra}

    def describe(self, track: Track) -> dict:
        """A track as JSON-ready data: id, first-seen time, box, smoothed label, confidence, probabilities."""
        return {
            "face_id": track.id,
            "since": round(track.since, 3),
            "box": list(track.box),
            "label": self.class_names[track.label],
            "confidence": round(float(track.probabilities[track.label]), 4),
            "probabilities": {name: round(float(p), 4) for name, p in zip(self.class_names, track.probabilities)},
        }

    def faces(self) -> list[dict]:
        """The confirmed faces now in view (or briefly unseen), oldest first."""
        return [self.describe(t) for t in self.tracks if t.confirmed]


class EmotionShares:
    """Each emotion's share of the confirmed faces seen over a sliding window (per processed frame)."""

    def __init__(self, class_names: Sequence[str], window_s: float = 60.0):
        self.class_names = tuple(class_names)
        self.window_s = window_s
        self._counts: deque[tuple[float, Counter]] = deque()
        self._total: Counter = Counter()

    def add(self, now: float, labels: Sequence[str]) -> None:
        if labels:
            counts = Counter(labels)
            self._counts.append((now, counts))
            self._total += counts
        while self._counts and self._counts[0][0] < now - self.window_s:
            self._total -= self._counts.popleft()[1]

    def shares(self) -> dict[str, float]:
        """{emotion: % of face observations in the window}; all 0 when no face was seen."""
        total = sum(self._total.values())
        return {name: round(100.0 * self._total[name] / total, 1) if total else 0.0 for name in self.class_names}


def dominant(faces: Sequence[dict]) -> str:
    """The emotion most faces in view show (ties: the higher summed confidence); `none` without faces."""
    if not faces:
        return "none"
    score: Counter = Counter()
    for face in faces:
        score[face["label"]] += 1 + face["confidence"] / (len(faces) + 1)
    return score.most_common(1)[0][0]
