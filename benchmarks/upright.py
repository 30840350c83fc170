"""Upright crops: does turning tilted faces upright by their eye line (`PipelineOptions.align`) help?

Faces: FER2013 PrivateTest crops (`--split PublicTest` to tune crop settings such as `--margin`;
FER+ "not a face" majorities and blank images left out, as in `detection.py`), padded by
reflection, upscaled so the face is 120 px, rotated about its centre by each angle (border
reflected: no black corners), and pasted with a feathered edge at a random place
on a synthetic 320x240 background (`scenes.background`), one face a frame. Each face keeps its
background and place at every angle, so the angles differ in the tilt alone. The real
EmotionPipeline (shipped model, default detector, one thread) runs on every frame with align off
and on. Per angle: faces found (by `detection.py`'s rule: a detection overlapping the face's upright
square with IoU >= 0.4, or a box on the face well inside a loose crop),
accuracy against the FER2013 labels and agreement with the model's label for the original 48x48
face (both over the found faces), and ms per face spent cropping (the pipeline's `preprocess`
stage, wall clock: mean and median).

    python benchmarks/upright.py
    python benchmarks/upright.py --faces 200 --angles 0,20,45
    python benchmarks/upright.py --detector yunet --split PublicTest --margin=-0.06,0,0.06
"""
from __future__ import annotations

from pathlib import Path

import click
import cv2
import numpy as np

from detection import face_mask, hits
from fer_edge import spec
from fer_edge.edge_runtime.classifier import SHIPPED_MODEL, ClassifierOptions, EmotionClassifier
from fer_edge.edge_runtime.detection import DEFAULT_DETECTOR, DETECTORS, create_detector, iou
from fer_edge.edge_runtime.pipeline import EmotionPipeline, PipelineOptions
from fer_edge.edge_runtime.scenes import tilted_frame
from fer_edge.train.data import default_data_path


class DetectOnce:
    """The real detector, run once per frame however many pipelines ask: both settings crop the same
    detections, for half the detection time."""

    def __init__(self, detector):
        self.detector, self.crop_margin, self.crop_shift = detector, detector.crop_margin, detector.crop_shift
        self._frame, self._found = None, []

    def detect(self, gray: np.ndarray):
        if gray is not self._frame:
            self._frame, self._found = gray, self.detector.detect(gray)
        return self._found


def best_match(faces, truth: np.ndarray):
    """The detected face that finds the face by `detection.py`'s rule (IoU >= 0.4 with the pasted
    crop, or a box on the face well inside a loose crop), the one overlapping it most."""
    if not faces:
        return None
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (f.box for f in faces)], float)
    found = hits(truth[None], boxes)[0]
    return faces[int(np.where(found, iou(truth, boxes), -1).argmax())] if found.any() else None


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=default_data_path(),
              show_default=True, help="FER2013 npz.")
@click.option("--split", type=click.Choice(["PublicTest", "PrivateTest"]), default="PrivateTest", show_default=True,
              help="FER2013 split the faces come from; tune crop settings on PublicTest, report on PrivateTest.")
@click.option("--faces", "n_faces", default=600, show_default=True, help="Faces of the split, drawn at random.")
@click.option("--angles", default="0,-15,15,-30,30", show_default=True, help="Comma-separated tilts in degrees.")
@click.option("--seed", default=0, show_default=True)
@click.option("--detector", "detector_name", type=click.Choice(sorted(DETECTORS)), default=DEFAULT_DETECTOR,
              show_default=True, help="Face detector whose boxes are cropped.")
@click.option("--detector-model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The detector's model file [default: the one fer-edge ships].")
@click.option("--min-face", default=64, show_default=True,
              help="Smallest face the detector searches for (px); the faces are 120 px, so coarse scales suffice.")
@click.option("--margin", "margins", default=None,
              help="Comma-separated crop margins to compare (fractions of the box side) [default: the detector's own].")
def main(data, split, n_faces, angles, seed, detector_name, detector_model, min_face, margins):
    """Accuracy on tilted faces with and without upright crops."""
    cv2.setNumThreads(1)
    fer = np.load(data)
    keep = face_mask(fer, split)
    pick = np.random.default_rng(seed).choice(int(keep.sum()), size=min(n_faces, int(keep.sum())), replace=False)
    faces, labels = fer["images"][keep][pick], fer["labels"][keep][pick]
    classifier = EmotionClassifier(ClassifierOptions(SHIPPED_MODEL, num_threads=1))
    direct = classifier.classify(faces).argmax(1)
    click.echo(f"{len(faces)} {split} faces; shipped model on the original 48x48 faces: "
               f"accuracy {np.mean(direct == labels):.3f}")
    detector = DetectOnce(create_detector(detector_name, detector_model, min_face=min_face, num_threads=1))
    report(faces, labels, direct, [float(a) for a in angles.split(",")], seed, {
        (margin, align): EmotionPipeline(classifier, detector, PipelineOptions(align=align, margin=margin))
        for margin in ([None] if margins is None else [float(m) for m in margins.split(",")]) for align in (False, True)})


def report(faces, labels, direct, angles, seed, pipelines) -> None:
    """One row per angle (and crop margin) for the align-off and align-on pipelines, keyed by
    (margin, align); all of them crop the same detections of each frame."""
    margins = list(dict.fromkeys(margin for margin, _ in pipelines))
    column = lambda margin: "" if margins == [None] else f"{margin:>7}"  # noqa: E731
    click.echo(f"{'angle':>5}{column('margin')} {'found':>7} {'acc off':>7} {'acc on':>7} "
               f"{'agree off':>9} {'agree on':>8} {'crop ms off (mean/median)':>25} {'crop ms on (mean/median)':>24}")
    for angle in angles:
        found = dict.fromkeys(margins, 0)
        correct, agree, ms = ({key: 0 for key in pipelines}, {key: 0 for key in pipelines},
                              {key: [] for key in pipelines})
        for index, face in enumerate(faces):
            image, truth = tilted_frame(face, angle, np.random.default_rng([seed, index]))
            matched = {}
            for key, pipeline in pipelines.items():
                pipeline.reset()
                result = pipeline.process(image)
                matched[key] = best_match(result.faces, truth)
                if result.faces:
                    ms[key].append(result.timings_ms["preprocess"] / len(result.faces))
            for margin in margins:
                pair = {align: matched[(margin, align)] for align in (False, True)}
                if None in pair.values():
                    continue
                found[margin] += 1
                for align, match in pair.items():
                    label = spec.CLASS_NAMES.index(match.label)
                    correct[(margin, align)] += label == labels[index]
                    agree[(margin, align)] += label == direct[index]
        timing = lambda values: f"{np.mean(values):.3f} / {np.median(values):.3f}"  # noqa: E731
        for margin in margins:
            rate = lambda counts, align: counts[(margin, align)] / max(found[margin], 1)  # noqa: E731
            click.echo(f"{angle:>5g}{column(margin)} {found[margin]:>3}/{len(faces):<3} {rate(correct, False):7.3f} "
                       f"{rate(correct, True):7.3f} {rate(agree, False):9.3f} {rate(agree, True):8.3f} "
                       f"{timing(ms[(margin, False)]):>25} {timing(ms[(margin, True)]):>24}")

if __name__ == "__main__":
    main()
