"""Faces in moving video: how many the pipeline keeps finding, frame after frame, and at what CPU,
when it searches the whole frame on every detection or only on every Nth one and follows the faces
it knows in between (`PipelineOptions.search_every`, `PyramidDetector.follow`).

Videos, per resolution: `--faces` faces of `detection.py`'s pool (FER2013 crops, 32-160 px) drifting
over one of its mosaics in random directions at `--speed` face sides a frame, bouncing off the
edges, overlapping as they cross (0.05 at 15 frames/s: a head moves its own width in 1.3 s); and
face-free videos, mosaics shaken by up to 8 px a frame with sensor noise. The pipeline detects on
every 3rd frame, as the daemon does, and carries boxes over in between. Printed per row: recall
over (face, frame) pairs (`detection.py`'s match), false boxes a frame on the face-free videos, and
the pipeline's CPU milliseconds a frame (process time, one thread, classification included). The
first row of each resolution is the pipeline without following: every detection a whole search
and nothing remembered.

    python benchmarks/video_detection.py                    # 640x480, 1280x720, 1920x1080; speeds 0.05 and 0.1
    python benchmarks/video_detection.py --resolution 1280x720 --speed 0.05 --search-every 1,5,10
"""
from __future__ import annotations

import time
from pathlib import Path

import click
import cv2
import numpy as np

from detection import RESOLUTIONS, fer_faces, match, mosaic, photographs
from fer_edge.edge_runtime import ClassifierOptions, EmotionClassifier, EmotionPipeline, PipelineOptions
from fer_edge.edge_runtime.classifier import SHIPPED_MODEL
from fer_edge.edge_runtime.detection import DEFAULT_DETECTOR, create_detector
from fer_edge.edge_runtime.scenes import paste
from fer_edge.train.data import default_data_path

DETECT_EVERY = 3


class SearchOnly:
    """A detector without `follow`: the pipeline searches the whole frame on every detection."""

    def __init__(self, detector):
        self.detect, self.crop_margin, self.crop_shift = detector.detect, detector.crop_margin, detector.crop_shift


def moving_faces(rng, photos, faces, width, height, count, speed, frames) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames of `count` faces drifting over a mosaic, and each frame's true boxes (x0, y0, x1, y1)."""
    still = mosaic(rng, photos, width, height)
    sides = np.exp(rng.uniform(np.log(32), np.log(160), count)).round().astype(int)
    start = np.stack([rng.uniform(0, width - sides), rng.uniform(0, height - sides)], axis=1)
    heading = rng.uniform(0, 2 * np.pi, count)
    velocity = np.stack([np.cos(heading), np.sin(heading)], axis=1) * sides[:, None] * speed
    chosen = faces[rng.integers(len(faces), size=count)]
    limit = np.stack([width - sides, height - sides], axis=1)
    images, truths = [], []
    for index in range(frames):
        travelled = (start + velocity * index) % (2 * limit)
        corner = np.where(travelled <= limit, travelled, 2 * limit - travelled).astype(int)  # bounced
        image = still.copy()
        for face, (x, y), side in zip(chosen, corner, sides):
            paste(image, face, x, y, int(side), feather=0.15)
        images.append(image)
        truths.append(np.concatenate([corner, corner + sides[:, None]], axis=1).astype(float))
    return images, truths


def shaken(rng, photos, width, height, frames) -> list[np.ndarray]:
    """A face-free mosaic shaken by up to 8 px a frame, with +-3 levels of noise."""
    still = mosaic(rng, photos, width + 8, height + 8)
    images = []
    for _ in range(frames):
        dx, dy = rng.integers(0, 9, 2)
        noisy = still[dy:dy + height, dx:dx + width] + rng.integers(-3, 4, (height, width))
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return images


def run(pipeline: EmotionPipeline, frames: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Boxes (x0, y0, x1, y1) found in each frame, and the mean CPU milliseconds a frame."""
    pipeline.reset()
    found, start = [], time.process_time()
    for frame in frames:
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (face.box for face in pipeline.process(frame).faces)]
        found.append(np.array(boxes, float).reshape(-1, 4))
    return found, (time.process_time() - start) * 1000 / len(frames)


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=default_data_path(),
              show_default=True, help="FER2013 npz.")
@click.option("--split", default="PrivateTest", show_default=True, help="FER2013 split the faces come from.")
@click.option("--detector", default=DEFAULT_DETECTOR, show_default=True, help="Face detector.")
@click.option("--resolution", "resolutions", multiple=True, type=click.Choice([f"{w}x{h}" for w, h in RESOLUTIONS]),
              help="Frame size(s). Default: all three.")
@click.option("--speed", "speeds", default="0.05,0.1", show_default=True,
              help="Comma-separated speeds of the faces, in face sides a frame.")
@click.option("--search-every", "search_every", default="1,5,10", show_default=True,
              help="Comma-separated settings of PipelineOptions.search_every to compare.")
@click.option("--faces", "count", default=8, show_default=True, help="Faces in each video.")
@click.option("--frames", default=90, show_default=True, help="Frames in each video.")
@click.option("--empty", "n_empty", default=10, show_default=True, help="Face-free videos per resolution.")
def main(data, split, detector, resolutions, speeds, search_every, count, frames, n_empty):
    """Measure how the pipeline finds moving faces with and without following them."""
    cv2.setNumThreads(1)
    photos, faces = photographs(), fer_faces(data, split)
    classifier = EmotionClassifier(ClassifierOptions(SHIPPED_MODEL, num_threads=1))
    settings = [int(n) for n in search_every.split(",")]
    click.echo(f"{detector}, detect every {DETECT_EVERY} frames; {count} faces of 32-160 px, {frames} frames a video; "
               f"{n_empty} face-free videos")
    click.echo(f"{'frame':>9} {'search every':>14} " + " ".join(f"{f'recall @{s}':>12}" for s in speeds.split(","))
               + f" {'CPU ms/frame':>13} {'false/frame':>12} {'CPU ms (no face)':>17}")
    for width, height in RESOLUTIONS:
        if resolutions and f"{width}x{height}" not in resolutions:
            continue
        rng = np.random.default_rng(width)
        videos = [moving_faces(rng, photos, faces, width, height, count, float(s), frames) for s in speeds.split(",")]
        empty = [image for _ in range(n_empty) for image in shaken(rng, photos, width, height, 30)]
        for every in [None] + settings:
            found_by = create_detector(detector, num_threads=1)
            pipeline = EmotionPipeline(classifier, found_by if every else SearchOnly(found_by),
                                       PipelineOptions(detect_every=DETECT_EVERY, search_every=every or 1))
            recalls, costs = [], []
            for images, truths in videos:
                found, ms = run(pipeline, images)
                hit = np.concatenate([match(truth, boxes)[0] > 0 for truth, boxes in zip(truths, found)])
                recalls.append(hit.mean())
                costs.append(ms)
            found, empty_ms = run(pipeline, empty)
            false = sum(len(boxes) for boxes in found) / len(empty)
            label = "no follow" if every is None else str(every)
            click.echo(f"{f'{width}x{height}':>9} {label:>14} " + " ".join(f"{r:12.3f}" for r in recalls)
                       + f" {np.mean(costs):13.1f} {false:12.3f} {empty_ms:17.1f}")


if __name__ == "__main__":
    main()
