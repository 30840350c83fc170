"""Synthetic scenes for measuring the runtime: FER2013 faces pasted at known boxes.

FER2013 has faces but no frames; pasting its (tightly cropped) faces onto larger backgrounds gives
frames whose true face boxes and true face crops are known, for detection recall, crop agreement
and latency on the same faces the model is scored on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Scene:
    """A grayscale frame with faces at known places."""

    image: np.ndarray
    """uint8 (height, width) frame."""

    boxes: list[tuple[int, int, int, int]]
    """(x, y, side, side) of each pasted face."""

    faces: list[np.ndarray]
    """The original 48x48 faces, in `boxes` order."""


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A face-free frame: a random gradient plus smooth blotches and a little sensor noise."""
    import cv2

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * rng.uniform(40, 120)
    blotches = cv2.resize(rng.uniform(-40, 40, (6, 10)).astype(np.float32), (width, height),
                          interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 4, (height, width))
    return np.clip(rng.uniform(60, 160) + gradient + blotches + noise, 0, 255).astype(np.uint8)


def _free_spot(rng, taken, side, width, height, tries=50):
    for _ in range(tries):
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        if all(x + side <= tx or tx + ts <= x or y + side <= ty or ty + ts <= y for tx, ty, ts, _ in taken):
            return x, y
    return None


def paste(image: np.ndarray, patch: np.ndarray, x: int, y: int, side: int, feather: float = 0.0) -> None:
    """Paste a square gray `patch`, resized to `side`, at (x, y) in `image` (in place).

    `feather` > 0 blends the patch's outer `feather` fraction of its side into the background with a
    linear ramp, so a tight face crop has no hard square edge for a detector to key on.
    """
    import cv2

    resized = cv2.resize(patch, (side, side), interpolation=cv2.INTER_CUBIC if side > patch.shape[0] else cv2.INTER_AREA)
    if feather <= 0:
        image[y:y + side, x:x + side] = resized
        return
    ramp = np.clip((np.minimum(np.arange(side), np.arange(side)[::-1]) + 0.5) / max(feather * side, 1e-6), 0, 1)
    alpha = np.minimum(ramp[:, None], ramp[None, :])
    region = image[y:y + side, x:x + side].astype(np.float32)
    image[y:y + side, x:x + side] = np.round(alpha * resized + (1 - alpha) * region).astype(np.uint8)


def tilted_frame(face: np.ndarray, angle: float, rng: np.random.Generator, width: int = 320, height: int = 240,
                 side: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A `background` frame with `face` at `side` px, turned `angle` degrees counter-clockwise, at a
    random place, and the face's upright square (x0, y0, x1, y1). The face is padded by reflection
    (a quarter of its side each way) before it turns, so no black corners show."""
    import cv2

    pad = face.shape[0] // 4
    padded = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    outer = round(padded.shape[0] * side / face.shape[0])
    patch = cv2.resize(padded, (outer, outer), interpolation=cv2.INTER_CUBIC)
    matrix = cv2.getRotationMatrix2D(((outer - 1) / 2, (outer - 1) / 2), angle, 1.0)
    patch = cv2.warpAffine(patch, matrix, (outer, outer), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    image = background(rng, width, height)
    x, y = int(rng.integers(0, width - outer + 1)), int(rng.integers(0, height - outer + 1))
    paste(image, patch, x, y, outer, feather=0.15)  # the ramp stays within the reflected border
    inset = (outer - side) / 2
    return image, np.array([x + inset, y + inset, x + inset + side, y + inset + side], float)


def compose_scene(faces: np.ndarray, rng: np.random.Generator, width: int = 640, height: int = 360,
                  sizes: tuple[int, int] = (120, 200), backdrop: np.ndarray | None = None,
                  feather: float = 0.0) -> Scene:
    """Paste 48x48 faces, upscaled to random sides within `sizes`, at non-overlapping places, onto
    `backdrop` (a gray frame of `height` x `width`) or a synthetic background."""
    image = background(rng, width, height) if backdrop is None else backdrop.copy()
    boxes, pasted = [], []
    for face in faces:
        side = int(rng.integers(sizes[0], sizes[1] + 1))
        spot = _free_spot(rng, boxes, side, width, height)
        if spot is None:
            continue
        x, y = spot
        paste(image, face, x, y, side, feather)
        boxes.append((x, y, side, side))
        pasted.append(face)
    return Scene(image, boxes, pasted)


def write_video(path: str | Path, faces: np.ndarray, rng: np.random.Generator, frames: int = 60,
                width: int = 640, height: int = 360, side: int = 160, fps: float = 15.0) -> list[tuple[int, int, int, int]]:
    """Write a video (mp4v) of one face drifting across a still background; return its box per frame."""
    import cv2

    still = background(rng, width, height)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path}")
    boxes = []
    x0, y0 = rng.integers(0, width - side), rng.integers(0, height - side)
    dx, dy = rng.uniform(-3, 3, 2)
    for index in range(frames):
        x = int(np.clip(x0 + dx * index, 0, width - side))
        y = int(np.clip(y0 + dy * index, 0, height - side))
        frame = still.copy()
        frame[y:y + side, x:x + side] = cv2.resize(faces[(index // 20) % len(faces)], (side, side),
                                                   interpolation=cv2.INTER_CUBIC)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        boxes.append((x, y, side, side))
    writer.release()
    return boxes
