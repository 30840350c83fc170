"""FER2013 loaders: the challenge CSV, the Kaggle image-folder export, and the project's `.npz`.

Every loader returns a `FerDataset` with the three official splits. The protocol: train on
Training, select on PublicTest, report on PrivateTest. A source without that distinction gets a
stratified, seeded PublicTest carved from Training, and says so in `notes`.
"""
from __future__ import annotations

import csv
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.sources import IMAGE_SUFFIXES  # the images predict reads, the images training reads
from fer_edge.errors import FerEdgeError
from fer_edge.spec import CLASS_NAMES, INPUT_SIZE, resize_face, to_gray

SPLITS = ("Training", "PublicTest", "PrivateTest")
DEFAULT_NPZ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fer2013" / "fer2013.npz"
_FOLDER_USAGE = {"train": "Training", "training": "Training", "test": "PrivateTest",
                 "val": "PublicTest", "validation": "PublicTest", "publictest": "PublicTest",
                 "privatetest": "PrivateTest"}
_PREFIX = re.compile(r"^(Training|PublicTest|PrivateTest)_", re.IGNORECASE)


@dataclass
class FerDataset:
    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # uint8 (N,)
    usage: np.ndarray  # str (N,)
    source: str
    dup_group: np.ndarray | None = None
    ferplus_votes: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise FerEdgeError(f"--split: unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return np.flatnonzero(self.usage == split)

    def leaked(self, split: str) -> np.ndarray | None:
        """Mask over `split`: True where an exact pixel copy of the image is in Training."""
        if self.dup_group is None:
            return None
        train_groups = set(self.dup_group[(self.usage == "Training") & (self.dup_group >= 0)].tolist())
        groups = self.dup_group[self.indices(split)]
        return np.isin(groups, list(train_groups)) & (groups >= 0)

    def subset(self, split: str, limit: int, seed: int = 0) -> np.ndarray:
        """Indices of a stratified, seeded subset of at most `limit` images of `split`."""
        idx = self.indices(split)
        if limit >= len(idx):
            return idx
        return _stratified_pick(idx, self.labels[idx], limit, seed)


def default_data_path() -> Path:
    # An empty FER_EDGE_DATA (e.g. FER_EDGE_DATA=$UNSET) would be Path("") = the current folder.
    return Path(os.environ.get("FER_EDGE_DATA") or DEFAULT_NPZ)


def load_dataset(path: str | Path | None = None, skip_bad: bool = False, val_fraction: float = 0.1,
                 seed: int = 0) -> FerDataset:
    """Load FER2013 from a `.npz`, a challenge CSV or an image-folder tree."""
    path = Path(path) if path else default_data_path()
    if not path.exists():
        raise FerEdgeError(f"{path}: no such file or folder (give --data or set FER_EDGE_DATA)")
    if path.is_dir():
        ds = _load_folder(path, skip_bad)
    elif path.suffix.lower() == ".npz":
        ds = _load_npz(path)
    elif path.suffix.lower() == ".csv":
        ds = _load_csv(path, skip_bad)
    else:
        raise FerEdgeError(f"{path}: expected a .npz, a .csv or an image folder")
    if len(ds.labels) == 0:
        raise FerEdgeError(f"{path}: no images found")
    if not (ds.usage == "PublicTest").any():
        _carve_validation(ds, val_fraction, seed)
    return ds


def _load_npz(path: Path) -> FerDataset:
    if not zipfile.is_zipfile(path):  # numpy would try random bytes as a pickle and say so
        raise FerEdgeError(f"{path}: not a .npz archive (truncated, or another format); expected arrays images, "
                           "labels, usage")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"images", "labels", "usage"} - set(z.files)
            if missing:
                raise FerEdgeError(f"{path}: missing arrays {', '.join(sorted(missing))}")
            images, labels, usage = z["images"], z["labels"], z["usage"].astype(str)
            dup = z["dup_group"] if "dup_group" in z.files else None
            votes = z["ferplus_votes"] if "ferplus_votes" in z.files else None
    # A truncated or damaged archive fails in zipfile (BadZipFile, or EOFError / zlib.error while
    # inflating a member), a damaged array header in numpy (ValueError).
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise FerEdgeError(f"{path}: not a readable .npz ({str(exc).strip() or type(exc).__name__})") from None
    if images.ndim != 3 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE) or images.dtype != np.uint8:
        raise FerEdgeError(f"{path}: images must be uint8 (N, 48, 48), got {images.dtype} {images.shape}")
    # usage was made text above, so only its shape can be wrong; a 2-D one would pass the count.
    for name, array, kinds, what in (("labels", labels, "iu", "integers"), ("usage", usage, "U", "split names")):
        if array.ndim != 1 or array.dtype.kind not in kinds:
            raise FerEdgeError(f"{path}: {name} must be {what} (N,), one per image, got {array.dtype} {array.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise FerEdgeError(f"{path}: label {bad} is not one of 0..{len(CLASS_NAMES) - 1}")
    if not len(images) == len(labels) == len(usage):
        raise FerEdgeError(f"{path}: {len(images)} images, {len(labels)} labels and {len(usage)} usage entries; "
                           "expected one of each per face")
    bad_usage = sorted(set(np.unique(usage).tolist()) - set(SPLITS))
    if bad_usage:
        raise FerEdgeError(f"{path}: unknown usage {bad_usage[0]!r}; expected one of {', '.join(SPLITS)}")
    # The optional arrays: one row per face too, else leakage and FER+ scores fail deep inside.
    for name, array, shape in (("dup_group", dup, (len(labels),)), ("ferplus_votes", votes, (len(labels), 10))):
        if array is not None and (array.shape != shape or array.dtype.kind not in "iu"):
            raise FerEdgeError(f"{path}: {name} must be integers of shape {shape}, got {array.dtype} {array.shape}")
    if votes is not None and votes.size and votes.min() < 0:
        raise FerEdgeError(f"{path}: ferplus_votes must be vote counts >= 0, got {int(votes.min())}")
    return FerDataset(images, labels.astype(np.uint8), usage, str(path), dup, votes)


def _load_csv(path: Path, skip_bad: bool) -> FerDataset:
    images, labels, usage, skipped = [], [], [], 0
    n_pixels = INPUT_SIZE * INPUT_SIZE
    # The file's encoding and quoting are checked for the whole file: neither can be skipped row by
    # row (an unterminated quote swallows every line after it). utf-8-sig: Excel starts its UTF-8 with a BOM.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            _check_csv_header(path, reader.fieldnames)
            for row_number, row in enumerate(reader, start=2):
                try:
                    image, label, split = _csv_row(row, n_pixels)
                except (ValueError, TypeError, AttributeError) as exc:
                    if not skip_bad:
                        raise FerEdgeError(f"{path}, row {row_number}: {exc} "
                                           "(fix it; `fer-edge data inspect --skip-bad` counts the bad rows)") from None
                    skipped += 1
                    continue
                images.append(image)
                labels.append(label)
                usage.append(split)
        except UnicodeDecodeError as exc:  # decoded in blocks, so no reliable line number
            raise FerEdgeError(f"{path}: not UTF-8 text ({exc.reason}: byte 0x{exc.object[exc.start]:02x}); "
                               "save the CSV as UTF-8") from None
        except csv.Error as exc:
            raise FerEdgeError(f"{path}, line {reader.line_num + 1}: malformed CSV ({exc}); "
                               "an unterminated quote runs to the end of the file") from None
    return _from_lists(images, labels, usage, path, skipped)


def _check_csv_header(path: Path, fieldnames) -> None:
    if not fieldnames or not {"emotion", "pixels"} <= set(fieldnames):
        raise FerEdgeError(f"{path}: header must have 'emotion' and 'pixels' (and 'Usage'), got {fieldnames}")


def _csv_row(row: dict, n_pixels: int) -> tuple[np.ndarray, int, str]:
    """One row's (48x48 image, label, split); ValueError naming what is wrong with it."""
    label = int(row["emotion"])
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"unknown label {row['emotion']!r}")
    split = (row.get("Usage") or "Training").strip()
    if split not in SPLITS:
        raise ValueError(f"unknown usage {split!r}")
    try:
        pixels = np.array(row["pixels"].split(), dtype=np.int64)
    except ValueError:
        raise ValueError("non-numeric pixel value") from None
    if pixels.size != n_pixels:
        raise ValueError(f"{pixels.size} pixels, expected {n_pixels}")
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("pixel value outside 0..255")
    return pixels.astype(np.uint8).reshape(INPUT_SIZE, INPUT_SIZE), label, split


def _load_folder(root: Path, skip_bad: bool) -> FerDataset:
    import cv2

    images, labels, usage, skipped = [], [], [], 0
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
    if not any(d.name.lower() in _FOLDER_USAGE for d in split_dirs):
        raise FerEdgeError(f"{root}: expected split folders such as train/ and test/ with one folder per class")
    for split_dir in split_dirs:
        folder_usage = _FOLDER_USAGE.get(split_dir.name.lower())
        if folder_usage is None:
            continue
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            name = class_dir.name.lower()
            if name not in CLASS_NAMES:
                raise FerEdgeError(f"{class_dir}: unknown class folder {class_dir.name!r}; "
                                   f"expected one of {', '.join(CLASS_NAMES)}")
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                # Decoded as predict decodes frames: 8-bit BGR, so 16-bit PNGs are scaled, not saturated.
                # A fifo or device would block cv2.imread for good: only regular files are read.
                image = cv2.imread(str(file), cv2.IMREAD_COLOR) if file.is_file() else None
                if image is None:
                    if not skip_bad:
                        raise FerEdgeError(f"{file}: unreadable image "
                                           "(fix it; `fer-edge data inspect --skip-bad` counts the bad files)")
                    skipped += 1
                    continue
                prefix = _PREFIX.match(file.name)
                images.append(resize_face(to_gray(image)))
                labels.append(CLASS_NAMES.index(name))
                usage.append(_canonical_split(prefix.group(1)) if prefix else folder_usage)
    return _from_lists(images, labels, usage, root, skipped)


def _canonical_split(name: str) -> str:
    return next(s for s in SPLITS if s.lower() == name.lower())


def _from_lists(images, labels, usage, path: Path, skipped: int) -> FerDataset:
    stack = np.stack(images) if images else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
    ds = FerDataset(stack, np.array(labels, np.uint8), np.array(usage, dtype="<U11"), str(path))
    if skipped:
        ds.notes.append(f"skipped {skipped} bad entries")
    return ds


def _carve_validation(ds: FerDataset, fraction: float, seed: int) -> None:
    train = ds.indices("Training")
    n_val = int(round(len(train) * fraction))
    if n_val == 0:
        return
    val = _stratified_pick(train, ds.labels[train], n_val, seed)
    ds.usage = ds.usage.astype("<U11")
    ds.usage[val] = "PublicTest"
    ds.notes.append(f"source has no PublicTest split: carved a stratified {fraction:.0%} of Training "
                    f"(seed {seed}, {n_val} images) as the validation split")


def _stratified_pick(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    try:
        picked, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    except ValueError:  # a class too rare to stratify: fall back to a plain seeded draw
        picked = np.random.default_rng(seed).choice(idx, n, replace=False)
    return np.sort(picked)


def describe(ds: FerDataset) -> dict:
    """Counts per split and class, imbalance, blank images and exact duplicates across splits."""
    report = {"source": ds.source, "total": int(len(ds.labels)), "notes": list(ds.notes), "splits": {}}
    for split in SPLITS:
        idx = ds.indices(split)
        counts = np.bincount(ds.labels[idx], minlength=len(CLASS_NAMES))
        report["splits"][split] = {
            "total": int(len(idx)),
            "per_class": dict(zip(CLASS_NAMES, counts.tolist())),
            "imbalance_ratio": round(float(counts.max() / counts.min()), 2) if counts.min() else None,
        }
    stds = ds.images.reshape(len(ds.images), -1).std(axis=1)
    report["blank_images"] = {s: int((stds[ds.indices(s)] < 1.0).sum()) for s in SPLITS}
    report["duplicates"] = _cross_split_duplicates(ds)
    return report


def _cross_split_duplicates(ds: FerDataset) -> dict:
    """Test images whose exact pixels also occur in Training (hashing pixels when no dup_group)."""
    if ds.dup_group is not None:
        groups = ds.dup_group
    else:
        _, groups = np.unique(ds.images.reshape(len(ds.images), -1), axis=0, return_inverse=True)
        groups = groups.ravel()
    train_groups = set(groups[ds.usage == "Training"].tolist())
    out = {}
    for split in SPLITS[1:]:
        g = groups[ds.indices(split)]
        out[f"{split}_in_Training"] = int(sum(x in train_groups and x >= 0 for x in g.tolist()))
    return out
