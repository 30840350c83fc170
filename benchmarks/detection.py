"""Face detection benchmark: labelled faces pasted at 20-160 px onto real photographs.

What it measures: whether a detector finds faces of a given size in frames of 640x480, 1280x720 and
1920x1080, how well its box fits, how often it boxes something that is not a face, and what it costs
on one core. Faces: FER2013 PrivateTest crops (48x48 gray, tight forehead-to-chin; FER+ "not a
face" majorities and blank images left out), upscaled and pasted with a feathered 15% border so no
square edge gives them away, and the face of the public-domain astronaut photo that fer-edge ships
(`fer_edge/assets/astronaut.jpg`), pasted with its hair, neck and background around it. A
48x48 crop upscaled to 160 px is blurrier than a real face of that size, and a 48x48 crop shrunk to
24 px is a fair small face: the large buckets are harder here than in real footage. Backgrounds and
face-free images: mosaics of the CC0 / public-domain photographs scikit-image ships (its coins are left out: they bear heads;
the cat stays in as a hard non-human face) (bricks, grass,
gravel, a rocket, coffee, a cat, a clock, text, a galaxy field, a retina, cells).

Real small faces: the 100 faces of scikit-image's LFW subset (`skimage.data.lfw_subset()`: news
photographs of Labeled Faces in the Wild, cropped to 25x25 brows-to-chin, the crop a real face of
24-39 px is), pasted at 24-39 px onto their own frames of each resolution, 8 a frame, and reported
as the `LFW` rows beside the FER2013 ones: the same recall target holds for them.

    python benchmarks/detection.py                       # every detector, targets for the default
    python benchmarks/detection.py --detector blazeface-full --sweep 0.4,0.5,0.6,0.7
    python benchmarks/detection.py --face-range          # the face sizes BlazeFace and YuNet resolve

A face counts as found when a detection overlaps its box with IoU >= 0.4 (detectors draw boxes of
their own proportions: BlazeFace's span brows to mouth, ~0.88 of a FER2013 crop), or lies inside
the pasted crop at >= 0.4 of its side (some FER2013 crops show the face well inside a wider view). Targets (exit 1
if the default detector misses one, unless --report-only): recall >= 0.95 for faces >= 40 px and
>= 0.85 for 24-40 px at every resolution; <= 0.05 false detections per face-free image;
<= 15 ms per 1280x720 frame on one thread (CPU time of the process, median over frames).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from fer_edge.edge_runtime.detection import DEFAULT_DETECTOR, DETECTORS, create_detector, iou
from fer_edge.edge_runtime.scenes import paste
from fer_edge.train.data import default_data_path

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "fer_edge" / "assets" / "astronaut.jpg"
ASTRONAUT_FACE = (168, 68, 108)
"""Hand-labelled FER2013-style square (x, y, side) of the face in astronaut.jpg: hairline to chin."""
PHOTOS = ("brick", "grass", "gravel", "rocket", "coffee", "hubble_deep_field", "text", "clock",
          "chelsea", "retina", "cell")
RESOLUTIONS = ((640, 480), (1280, 720), (1920, 1080))
BUCKETS = ((20, 24), (24, 40), (40, 80), (80, 161))
LFW_SIDES = (24, 39.4)
"""Side range the LFW faces are pasted at (log-uniform, rounded): the 24-39 px bucket."""
MATCH_IOU = 0.4


@dataclass
class Frame:
    image: np.ndarray
    boxes: np.ndarray
    """(N, 4) true face boxes (x0, y0, x1, y1)."""


def photographs() -> list[np.ndarray]:
    import skimage.data
    import skimage.util

    gray = []
    for name in PHOTOS:
        image = skimage.util.img_as_ubyte(getattr(skimage.data, name)())
        gray.append(cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image)
    return gray


def mosaic(rng: np.random.Generator, photos: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """A busy face-free frame: four random crops of different photographs, split at a random point."""
    frame = np.empty((height, width), np.uint8)
    sx, sy = int(rng.uniform(0.3, 0.7) * width), int(rng.uniform(0.3, 0.7) * height)
    for (x0, x1), (y0, y1), index in zip(((0, sx), (sx, width), (0, sx), (sx, width)),
                                         ((0, sy), (0, sy), (sy, height), (sy, height)),
                                         rng.choice(len(photos), 4, replace=False)):
        photo = photos[index]
        zoom = rng.uniform(0.5, 2.0)
        w, h = min(photo.shape[1], max(8, round((x1 - x0) / zoom))), min(photo.shape[0], max(8, round((y1 - y0) / zoom)))
        cx, cy = rng.integers(0, photo.shape[1] - w + 1), rng.integers(0, photo.shape[0] - h + 1)
        frame[y0:y1, x0:x1] = cv2.resize(photo[cy:cy + h, cx:cx + w], (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return frame


def face_mask(fer, split: str) -> np.ndarray:
    """Which images of the loaded npz are `split` faces: FER+ "not a face" majorities and blank images left out."""
    votes = fer["ferplus_votes"]
    rated_a_face = (votes.sum(1) > 0) & (votes[:, -1] * 2 < votes.sum(1))
    return (fer["usage"] == split) & rated_a_face & (fer["images"].std((1, 2)) > 5)


def fer_faces(data: Path, split: str) -> np.ndarray:
    fer = np.load(data)
    return fer["images"][face_mask(fer, split)]


def lfw_faces() -> np.ndarray:
    """The 100 real faces of scikit-image's LFW subset (its other 100 images are non-faces), uint8 25x25."""
    import skimage.data
    import skimage.util

    return skimage.util.img_as_ubyte(skimage.data.lfw_subset()[:100])


def astronaut_patch() -> tuple[np.ndarray, float]:
    """The astronaut's face with context around it, and the fraction of the patch side the face is."""
    gray = cv2.imread(str(ASTRONAUT), cv2.IMREAD_GRAYSCALE)
    x, y, side = ASTRONAUT_FACE
    pad = round(0.35 * side)
    return gray[y - pad:y + side + pad, x - pad:x + side + pad], side / (side + 2 * pad)


def compose(rng, photos, faces, astronaut, width, height, per_frame=8, sides=(20, 160)) -> Frame:
    """A mosaic frame with `per_frame` faces, sides log-uniform in `sides` px, not overlapping;
    `astronaut` None pastes only `faces`."""
    image = mosaic(rng, photos, width, height)
    patch, fraction = astronaut or (None, 1.0)
    boxes = []
    for _ in range(per_frame):
        side = int(round(np.exp(rng.uniform(np.log(sides[0]), np.log(sides[1])))))
        is_astronaut = rng.random() < 0.15 and astronaut is not None
        outer = round(side / fraction) if is_astronaut else side
        for _ in range(50):
            x, y = int(rng.integers(0, width - outer + 1)), int(rng.integers(0, height - outer + 1))
            box = np.array([x, y, x + outer, y + outer], float)
            if not boxes or (iou(box, np.array([b[4] for b in boxes])) == 0).all():
                break
        else:
            continue
        if is_astronaut:
            paste(image, patch, x, y, outer, feather=0.5 * (1 - fraction) * 0.95)
            inset = (outer - side) / 2
            boxes.append((x + inset, y + inset, x + inset + side, y + inset + side, box))
        else:
            paste(image, faces[rng.integers(len(faces))], x, y, side, feather=0.15)
            boxes.append((x, y, x + side, y + side, box))
    return Frame(image, np.array([b[:4] for b in boxes], float).reshape(-1, 4))


def hits(truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(truth, found) table: does the detection find that face? IoU >= MATCH_IOU, or the detection
    lies (>= 80%) inside the pasted crop and is >= 0.4 of its side: FER2013 crops are not all tight,
    some show a face well inside a wider view, and a box on that face has found it."""
    table = np.zeros((len(truth), len(found)), bool)
    for t, box in enumerate(truth):
        x0, y0 = np.maximum(box[0], found[:, 0]), np.maximum(box[1], found[:, 1])
        x1, y1 = np.minimum(box[2], found[:, 2]), np.minimum(box[3], found[:, 3])
        inside = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None) / np.prod(found[:, 2:] - found[:, :2], axis=1)
        ratio = (found[:, 2] - found[:, 0]) / (box[2] - box[0])
        table[t] = (iou(box, found) >= MATCH_IOU) | ((inside >= 0.8) & (ratio >= 0.4))
    return table


def match(truth: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, int]:
    """IoU of the detection matched to each true box (0: missed; greedy, best IoU first, among
    detections that find it) and the count of detections left unmatched."""
    ious = np.zeros(len(truth))
    free = np.ones(len(found), bool)
    if len(found) and len(truth):
        table = np.stack([iou(box, found) for box in truth])
        valid = hits(truth, found)
        for flat in np.argsort(-table, axis=None):
            t, f = np.unravel_index(flat, table.shape)
            if valid[t, f] and ious[t] == 0 and free[f]:
                ious[t], free[f] = max(table[t, f], 1e-6), False
    return ious, int(free.sum())


def as_corners(detections, min_score: float = 0.0) -> np.ndarray:
    kept = [(x, y, x + w, y + h) for (x, y, w, h), s in ((d.box, d.score) for d in detections) if s >= min_score]
    return np.array(kept, float).reshape(-1, 4)


def detect_all(detector, images) -> tuple[list, float]:
    """Detections in each image, and the median CPU milliseconds per image. CPU time of this
    process, not wall time: on a shared machine the wall clock also counts other jobs' turns, and
    with one thread the process's CPU time is the time one core spends on the frame."""
    found, ms = [], []
    for image in images:
        start = time.process_time()
        found.append(detector.detect(image))
        ms.append((time.process_time() - start) * 1000)
    return found, float(np.median(ms))


def score(frames, empties_found, frames_found, sides, min_score=0.0):
    """Recall per bucket, mean IoU of the found faces and false detections per face-free image."""
    ious = np.concatenate([match(frame.boxes, as_corners(found, min_score))[0]
                           for frame, found in zip(frames, frames_found)])
    recall = {bucket: float((ious[(sides >= bucket[0]) & (sides < bucket[1])] > 0).mean()) for bucket in BUCKETS}
    false = sum(len(as_corners(found, min_score)) for found in empties_found) / len(empties_found)
    return recall, float(ious[ious > 0].mean()), false


def face_range(faces, photos, rng, names) -> None:
    """Recall of each pyramid detector on one window at a fixed scale, by face side in input pixels,
    for FER2013 faces and for the real LFW faces, and how its boxes sit on the pasted FER2013 crops
    (side ratio, centre shift: `box_to_crop`, `crop_shift`)."""
    from fer_edge.edge_runtime.search import Window

    for name in names:
        detector = create_detector(name, num_threads=1)
        model = detector.model
        click.echo(f"{name} (input {model.input}, min_score {model.min_score}):")
        for label, pasted in (("FER2013", faces), ("LFW", lfw_faces())):
            cells, ratios, shifts = [], [], []
            for side in (8, 10, 12, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 112, 128, 160, 200, 240, 280):
                # A fixed-size model is measured on its own input; a resizable one on a window twice the face.
                size = max(model.input, -(-2 * side // model.multiple) * model.multiple) if model.resizable else model.input
                if side > size:
                    continue
                found_at = []
                for _ in range(60):
                    image = mosaic(rng, photos, size, size)
                    x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
                    paste(image, pasted[rng.integers(len(pasted))], x, y, side, feather=0.15)
                    boxes, scores, _ = detector._run(image, Window(0, 0, size, size, 1.0, size, size), model.min_score)
                    truth = np.array([x, y, x + side, y + side], float)
                    overlaps = iou(truth, boxes) if len(boxes) else np.zeros(0)
                    found_at.append(bool(len(boxes)) and overlaps.max() >= MATCH_IOU)
                    if found_at[-1]:
                        best = boxes[overlaps.argmax()]
                        ratios.append((np.sqrt((best[2] - best[0]) * (best[3] - best[1])) / side,
                                       max(best[2] - best[0], best[3] - best[1]) / side))
                        shifts.append(((best[1] + best[3]) / 2 - (y + side / 2)) / side)
                cells.append(f"{side}px {np.mean(found_at):.2f}")
            click.echo(f"  {label:8} " + "  ".join(cells))
            if label == "FER2013":  # the crop the runtime cuts is FER2013's
                sqrt_side, max_side = np.median(ratios, axis=0)
                # box_to_crop uses the geometric mean side; the crop margin, the longer side (pipeline._square).
                click.echo(f"  box side / crop side: median {sqrt_side:.2f} (sqrt(w*h)), {max_side:.2f} (max(w, h)); "
                           f"box centre below the crop's: median {np.median(shifts):+.3f} of its side")


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=default_data_path(),
              show_default=True, help="FER2013 npz.")
@click.option("--detector", "names", multiple=True, type=click.Choice(sorted(DETECTORS)),
              help="Detector(s) to measure. Default: all of them.")
@click.option("--resolution", "resolutions", multiple=True, type=click.Choice([f"{w}x{h}" for w, h in RESOLUTIONS]),
              help="Frame size(s) to measure. Default: all three.")
@click.option("--frames", default=20, show_default=True, help="Frames with faces per resolution.")
@click.option("--empty", "n_empty", default=20, show_default=True, help="Face-free images per resolution.")
@click.option("--min-face", default=24, show_default=True, help="Smallest face the detectors are set to find (px).")
@click.option("--sweep", default=None, help="Comma-separated score thresholds: also print recall / false "
              "detections at each (detections found once at the lowest; for calibration).")
@click.option("--split", default="PrivateTest", show_default=True, help="FER2013 split the faces come from.")
@click.option("--face-range", "show_range", is_flag=True, help="Only measure the face sizes each pyramid detector "
              "(BlazeFace, YuNet; or those given with --detector) resolves, and how its boxes sit on the faces.")
@click.option("--report-only", is_flag=True, help="Always exit 0, even when a target is missed.")
def main(data, names, resolutions, frames, n_empty, min_face, sweep, split, show_range, report_only):
    """Measure face detectors on labelled composed frames and check the default detector's targets."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    photos, faces, astronaut = photographs(), fer_faces(data, split), astronaut_patch()
    if show_range:
        if "haar" in names:
            raise click.BadParameter("haar searches its own scales: --face-range measures BlazeFace and YuNet",
                                     param_hint="--detector")
        face_range(faces, photos, rng, names or ("blazeface-short", "blazeface-full", "yunet"))
        return
    names = list(names) or list(DETECTORS)
    thresholds = sorted(float(t) for t in sweep.split(",")) if sweep else []
    sets = {}
    for width, height in RESOLUTIONS:
        if resolutions and f"{width}x{height}" not in resolutions:
            continue
        composed = [compose(rng, photos, faces, astronaut, width, height) for _ in range(frames)]
        empties = [mosaic(rng, photos, width, height) for _ in range(n_empty)]
        sides = np.concatenate([f.boxes[:, 2] - f.boxes[:, 0] for f in composed])
        sets[(width, height)] = composed, empties, sides
    # Their own generator, so the FER2013 frames above stay the same with or without them.
    lfw, lfw_rng = lfw_faces(), np.random.default_rng(1)
    real = {size: [compose(lfw_rng, photos, lfw, None, *size, sides=LFW_SIDES) for _ in range(frames)] for size in sets}
    click.echo(f"faces per bucket at each resolution: " + ", ".join(
        f"{w}x{h}: " + "/".join(str(int(((s >= a) & (s < b)).sum())) for a, b in BUCKETS) for (w, h), (_, _, s) in sets.items()))
    header = f"{'detector':16} {'frame':>9} " + " ".join(f"{f'R {a}-{b - 1}':>9}" for a, b in BUCKETS)
    click.echo(header + f" {'IoU':>5} {'false/img':>9} {'CPU ms/frame':>12}")
    checks = []
    for name in names:
        options = dict(min_face=min_face, num_threads=1)
        if thresholds and name != "haar":  # Haar gives no scores
            options["min_score"] = thresholds[0]
        detector = create_detector(name, **options)
        for (width, height), (composed, empties, sides) in sets.items():
            detector.detect(composed[0].image)  # warm-up
            frames_found, ms = detect_all(detector, [f.image for f in composed] + empties)
            frames_found, empties_found = frames_found[:len(composed)], frames_found[len(composed):]
            for threshold in thresholds or [0.0]:
                recall, mean_iou, false = score(composed, empties_found, frames_found, sides, threshold)
                label = name + (f"@{threshold:g}" if thresholds else "")
                click.echo(f"{label:16} {f'{width}x{height}':>9} " + " ".join(f"{recall[b]:9.2f}" for b in BUCKETS)
                           + f" {mean_iou:5.2f} {false:9.3f} {ms:12.1f}")
                if name == DEFAULT_DETECTOR and not thresholds:
                    res = f"{width}x{height}"
                    checks += [(f"{name} {res}: recall >= 0.95 for faces >= 40 px", min(recall[BUCKETS[2]], recall[BUCKETS[3]]) >= 0.95,
                                f"{min(recall[BUCKETS[2]], recall[BUCKETS[3]]):.2f}"),
                               (f"{name} {res}: recall >= 0.85 for faces 24-39 px", recall[BUCKETS[1]] >= 0.85, f"{recall[BUCKETS[1]]:.2f}"),
                               (f"{name} {res}: <= 0.05 false detections per face-free image", false <= 0.05, f"{false:.3f}")]
                    if (width, height) == (1280, 720):
                        checks.append((f"{name} {res}: <= 15 ms per frame, 1 thread", ms <= 15.0, f"{ms:.1f} ms"))
            real_found, real_ms = detect_all(detector, [f.image for f in real[(width, height)]])
            for threshold in thresholds or [0.0]:
                found = np.concatenate([match(frame.boxes, as_corners(dets, threshold))[0]
                                        for frame, dets in zip(real[(width, height)], real_found)])
                recall = float((found > 0).mean())
                label = name + (f"@{threshold:g}" if thresholds else "") + " LFW"
                cells = ["-" if b != BUCKETS[1] else f"{recall:.2f}" for b in BUCKETS]
                click.echo(f"{label:16} {f'{width}x{height}':>9} " + " ".join(f"{c:>9}" for c in cells)
                           + f" {found[found > 0].mean() if (found > 0).any() else 0:5.2f} {'-':>9} {real_ms:12.1f}")
                if name == DEFAULT_DETECTOR and not thresholds:
                    checks.append((f"{name} {width}x{height}: recall >= 0.85 for real (LFW) faces 24-39 px",
                                   recall >= 0.85, f"{recall:.2f} of {len(found)}"))
    click.echo("")
    for what, ok, value in checks:
        click.echo(f"{'PASS' if ok else 'MISS'}  {what}: {value}")
    if not report_only and any(not ok for _, ok, _ in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
