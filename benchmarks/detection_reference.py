"""BlazeFace decoding against MediaPipe's own graph, on the same pixels and the same model files.

MediaPipe's Python package is a dev-only reference (not a fer-edge dependency). Its legacy
`face_detection` solution graph, expanded to its calculators (ImageToTensor, SsdAnchors,
TensorsToDetections, weighted NMS, projection) with MediaPipe's own options, is run with only the
model path swapped for the file fer-edge ships (MediaPipe's package bundles its own files, among them
a sparse full-range model that is not the one fer-edge ships). fer-edge's side is one native-scale window
(`BlazeFaceDetector._run`, i.e. `decode`) and `weighted_nms` at MediaPipe's thresholds, without
fer-edge's keypoint check, second look or calibrated threshold. Images are input-sized squares, so
neither pyramid, tiles nor letterbox is involved: the sample photo resized, and composed scenes of
FER2013 faces sized within the model's face range. fer-edge feeds BlazeFace gray frames, so MediaPipe
gets the same gray pixels as three equal channels (the photo's RGB score is printed beside it).

    /usr/bin/python3 -m venv .venv-mediapipe
    .venv-mediapipe/bin/pip install mediapipe==0.10.21 'ai-edge-litert==2.3.*' click
    PYTHONPATH=. .venv-mediapipe/bin/python benchmarks/detection_reference.py

(0.10.21 is the newest release with `mediapipe.solutions`; its OpenCV stands in for fer-edge's.)
Exit 1 when the detection sets differ, or a matched pair has box IoU < 0.9 or a keypoint further
than 5% of the box width apart.
"""
from __future__ import annotations

import os

import click
import cv2
import numpy as np

from detection import ASTRONAUT, fer_faces
from fer_edge.edge_runtime.blazeface import BlazeFaceFullDetector, BlazeFaceShortDetector
from fer_edge.edge_runtime.pyramid import DETECTOR_ASSETS
from fer_edge.edge_runtime.detection import iou, weighted_nms
from fer_edge.edge_runtime.scenes import compose_scene
from fer_edge.edge_runtime.search import Window
from fer_edge.train.data import default_data_path

MIN_IOU, MAX_KEYPOINT = 0.9, 0.05
PAIR_IOU = 0.3  # detections overlapping less than this are not the same face
SUBPIXEL = 10_000  # weighted_nms rounds boxes to whole pixels: it gets them scaled by this


class MediaPipeReference:
    """MediaPipe's face_detection graph (model_selection 0 or 1) running `model_file`."""

    def __init__(self, full_range: bool, model_file):
        import mediapipe
        from mediapipe.calculators.tensor import inference_calculator_pb2, tensors_to_detections_calculator_pb2
        from mediapipe.calculators.tflite import ssd_anchors_calculator_pb2
        from mediapipe.calculators.util import non_max_suppression_calculator_pb2
        from mediapipe.framework import calculator_pb2
        from mediapipe.python._framework_bindings import resource_util, validated_graph_config
        from mediapipe.python.solution_base import SolutionBase
        from mediapipe.python.solutions import face_detection

        root = os.path.dirname(os.path.dirname(mediapipe.__file__))
        resource_util.set_resource_dir(root)
        graph = validated_graph_config.ValidatedGraphConfig()
        graph.initialize(binary_graph_path=os.path.join(root, face_detection._FULL_RANGE_GRAPH_FILE_PATH if full_range
                                                        else face_detection._SHORT_RANGE_GRAPH_FILE_PATH))
        config = calculator_pb2.CalculatorGraphConfig.FromString(graph.binary_config)
        kinds = {"Inference": inference_calculator_pb2.InferenceCalculatorOptions,
                 "TensorsToDetections": tensors_to_detections_calculator_pb2.TensorsToDetectionsCalculatorOptions,
                 "SsdAnchors": ssd_anchors_calculator_pb2.SsdAnchorsCalculatorOptions}
        self.options = {}
        for node in config.node:
            kind = next((k for k in kinds if node.calculator.startswith(k)), None)
            if kind:
                self.options[kind] = kinds[kind]()
                node.node_options[0].Unpack(self.options[kind])
            if kind == "Inference":
                self.options[kind].model_path = str(model_file)  # absolute: resolved as is
                node.node_options[0].Pack(self.options[kind])
            if node.calculator == "NonMaxSuppressionCalculator":
                self.options["NMS"] = node.options.Extensions[non_max_suppression_calculator_pb2.NonMaxSuppressionCalculatorOptions.ext]
        self._solution = SolutionBase(graph_config=config, outputs=["detections"])

    def detect(self, rgb: np.ndarray):
        """Boxes (N, 4) x0, y0, x1, y1, scores and keypoints (N, 6, 2), in pixels."""
        found = self._solution.process({"image": rgb}).detections or []
        height, width = rgb.shape[:2]
        boxes = [(b.xmin * width, b.ymin * height, (b.xmin + b.width) * width, (b.ymin + b.height) * height)
                 for b in (d.location_data.relative_bounding_box for d in found)]
        keypoints = [[(k.x * width, k.y * height) for k in d.location_data.relative_keypoints] for d in found]
        return (np.array(boxes, float).reshape(-1, 4), np.array([d.score[0] for d in found]),
                np.array(keypoints, float).reshape(-1, 6, 2))


def ours(detector, gray: np.ndarray):
    """fer-edge's decoding of one native-scale window, then weighted NMS, at MediaPipe's thresholds."""
    size = detector.model.input
    boxes, scores, keypoints = detector._run(gray, Window(0, 0, size, size, 1.0, size, size), detector.model.min_score)
    found = weighted_nms(boxes * SUBPIXEL, scores, keypoints * SUBPIXEL, detector.NMS_IOU)
    corners = np.array([(x, y, x + w, y + h) for x, y, w, h in (d.box for d in found)], float).reshape(-1, 4)
    keypoints = np.array([d.keypoints for d in found], float).reshape(-1, 6, 2)
    return corners / SUBPIXEL, np.array([d.score for d in found]), keypoints / SUBPIXEL


def three_channels(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def compare(reference, mine):
    """Greedy pairs by IoU: (IoU, keypoint distance / box width, |score difference|) per pair, and the
    counts left unpaired on each side."""
    (rb, rs, rk), (mb, ms, mk) = reference, mine
    pairs, free = [], np.ones(len(mb), bool)
    for r in np.argsort(-rs):
        overlap = np.where(free, iou(rb[r], mb), 0.0) if len(mb) else np.zeros(0)
        if len(overlap) and overlap.max() >= PAIR_IOU:
            o = int(overlap.argmax())
            free[o] = False
            width = rb[r, 2] - rb[r, 0]
            pairs.append((overlap[o], np.hypot(*(rk[r] - mk[o]).T).max() / width, abs(rs[r] - ms[o])))
    return np.array(pairs).reshape(-1, 3), len(rb) - len(pairs), int(free.sum())


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=default_data_path(), show_default=True,
              help="FER2013 npz (faces for the composed scenes).")
@click.option("--scenes", default=8, show_default=True, help="Composed scenes per model.")
def main(data, scenes):
    """Compare fer-edge's BlazeFace decoding with MediaPipe's graph; exit 1 on disagreement."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    faces = fer_faces(data, "PrivateTest")
    photo = cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)
    failures = []
    for name, cls, full_range in (("short-range", BlazeFaceShortDetector, False), ("full-range", BlazeFaceFullDetector, True)):
        detector = cls(num_threads=1)
        model = detector.model
        reference = MediaPipeReference(full_range, DETECTOR_ASSETS / model.file)
        anchors, decoder = reference.options["SsdAnchors"], reference.options["TensorsToDetections"]
        settings = (round(decoder.min_score_thresh, 6), round(reference.options["NMS"].min_suppression_threshold, 6),
                    tuple(anchors.strides), anchors.interpolated_scale_aspect_ratio)
        mine = (model.min_score, detector.NMS_IOU, model.strides, model.interpolated_scale_aspect_ratio)
        click.echo(f"{name}: min score, NMS IoU, anchor strides, interpolated scale: MediaPipe's graph {settings}, fer-edge {mine}")
        if settings != mine:
            failures.append(f"{name}: fer-edge's settings differ from MediaPipe's graph")
        size = model.input
        small = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        images = [("astronaut.jpg", gray)]
        lo, hi = model.face_range
        for index in range(scenes):
            chosen = faces[rng.integers(len(faces), size=2)]
            images.append((f"scene {index}", compose_scene(chosen, rng, size, size, (round(lo * 1.25), round(hi * 0.8)), feather=0.15).image))
        rgb_scores, gray_scores = reference.detect(small)[1], reference.detect(three_channels(gray))[1]
        click.echo(f"  astronaut.jpg, MediaPipe's scores on RGB {np.round(rgb_scores, 3)} vs gray {np.round(gray_scores, 3)}")
        counts, rows = [0, 0], []
        for label, image in images:
            found = reference.detect(three_channels(image)), ours(detector, image)
            pairs, only_reference, only_ours = compare(*found)
            counts = [counts[0] + len(found[0][1]), counts[1] + len(found[1][1])]
            rows.append(pairs)
            if only_reference or only_ours:
                failures.append(f"{name} {label}: {only_reference} found by MediaPipe only, {only_ours} by fer-edge only")
            for pair_iou, keypoint, _ in pairs:
                if pair_iou < MIN_IOU or keypoint > MAX_KEYPOINT:
                    failures.append(f"{name} {label}: box IoU {pair_iou:.3f}, keypoint error {keypoint:.3f} of box width")
        pairs = np.concatenate(rows)
        click.echo(f"  {len(images)} images: faces found MediaPipe {counts[0]}, fer-edge {counts[1]}, matched {len(pairs)}")
        if len(pairs):
            click.echo(f"  box IoU mean {pairs[:, 0].mean():.6f} min {pairs[:, 0].min():.6f}; max keypoint distance "
                       f"{pairs[:, 1].max():.1e} of box width; max |score difference| {pairs[:, 2].max():.1e}")
    for failure in failures:
        click.echo(f"FAIL  {failure}")
    if failures:
        raise SystemExit(1)
    click.echo("PASS  fer-edge's decoding matches MediaPipe's graph")


if __name__ == "__main__":
    main()
