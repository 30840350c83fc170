"""FER+ views of FER2013: majority labels, vote distributions and the neutral-face check.

`ferplus_votes` holds 10 crowd votes per image in `ferplus.csv` column order (see the data's
SOURCE.md). The majority label follows FER+'s own `majority` mode (microsoft/FERPlus,
`src/ferplus.py`): single votes are dropped as outliers, and a class must then hold more than half
of the remaining votes. Images without such a majority, and those whose majority is contempt,
unknown or not-a-face (no FER2013 class), get no label and are left out of FER+ scores.
"""
from __future__ import annotations

import numpy as np

from fer_edge.spec import CLASS_NAMES

FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF")
# FER+ column -> FER2013 class index; contempt, unknown and NF have none.
TO_FER2013 = np.array([CLASS_NAMES.index(name) for name in
                       ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear")] + [-1, -1, -1])
NO_LABEL = -1
NEUTRAL = CLASS_NAMES.index("neutral")
NEGATIVE = tuple(CLASS_NAMES.index(name) for name in ("angry", "disgust", "fear", "sad"))
NEUTRAL_VOTES = 6
"""An image is FER+-neutral when at least this many of its 10 annotators chose neutral."""
PROTOCOL = (f"FER+ majority labels follow FER+'s own `majority` mode: single votes are dropped, then a class needs "
            f"more than half of the remaining votes; images without one, or whose majority is contempt, unknown or "
            f"not-a-face (no FER2013 class), are left out. FER+-neutral: at least {NEUTRAL_VOTES} of 10 votes "
            f"neutral. Negative: angry, disgust, fear or sad.")


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """(N, 10) votes -> (N,) FER2013 class indices of the FER+ majority, NO_LABEL where there is none."""
    kept = np.where(votes > 1, votes, 0).astype(np.int64)  # FER+'s outlier rule: a single vote does not count
    top = kept.argmax(axis=1)
    has_majority = kept.max(axis=1) * 2 > kept.sum(axis=1)
    return np.where(has_majority, TO_FER2013[top], NO_LABEL)


def distributions(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 10) votes -> (N, 7) vote shares over the FER2013 classes, and a mask of images that have any."""
    counts = np.zeros((len(votes), len(CLASS_NAMES)), np.float64)
    for column, cls in enumerate(TO_FER2013):
        if cls >= 0:
            counts[:, cls] += votes[:, column]
    totals = counts.sum(axis=1)
    valid = totals > 0
    counts[valid] /= totals[valid, None]
    return counts, valid


def neutral_mask(votes: np.ndarray) -> np.ndarray:
    return votes[:, FERPLUS_COLUMNS.index("neutral")] >= NEUTRAL_VOTES


def neutral_shares(pred: np.ndarray) -> dict:
    """Where predictions of FER+-neutral faces go: neutral, any negative emotion, and each class."""
    n = max(len(pred), 1)
    counts = np.bincount(pred, minlength=len(CLASS_NAMES))
    return {"images": int(len(pred)), "predicted_neutral": float(counts[NEUTRAL] / n),
            "predicted_negative": float(counts[list(NEGATIVE)].sum() / n),
            "predicted": {name: float(counts[i] / n) for i, name in enumerate(CLASS_NAMES)}}


def ferplus_metrics(votes: np.ndarray, probs: np.ndarray) -> dict:
    """Scores of predictions against FER+: majority-label accuracy and macro F1, and the neutral check."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = probs.argmax(axis=1)
    labels = majority_labels(votes)
    keep = labels != NO_LABEL
    classes = np.arange(len(CLASS_NAMES))
    return {
        "labelled_images": int(keep.sum()),
        "unlabelled_images": int((~keep).sum()),
        "accuracy": float(accuracy_score(labels[keep], pred[keep])) if keep.any() else None,
        "f1_macro": float(f1_score(labels[keep], pred[keep], labels=classes, average="macro", zero_division=0))
        if keep.any() else None,
        "neutral_faces": neutral_shares(pred[neutral_mask(votes)]),
    }


def figure(value: float | None, spec: str) -> str:
    """A score for a table, or n/a when there was nothing to score (no image with a FER+ majority)."""
    return "n/a" if value is None else format(value, spec)


def summary_line(metrics: dict) -> str:
    neutral = metrics["neutral_faces"]
    return (f"FER+ majority ({metrics['labelled_images']} images): accuracy {figure(metrics['accuracy'], '.4f')}  "
            f"macro F1 {figure(metrics['f1_macro'], '.4f')};  FER+-neutral faces ({neutral['images']}): predicted neutral "
            f"{neutral['predicted_neutral']:.1%}, negative {neutral['predicted_negative']:.1%} "
            f"(sad {neutral['predicted']['sad']:.1%})")
