"""Figures of a run: training curves and confusion matrices (matplotlib, no display)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.spec import CLASS_NAMES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    """Training vs validation accuracy and loss per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, [h.get(metric) for h in history], "o-", label="training")
        ax.plot(epochs, [h.get(f"val_{metric}") for h in history], "o-", label="validation (PublicTest)")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_confusion(cm: np.ndarray, path: Path, title: str) -> None:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    for ax, data, fmt, name in ((axes[0], cm, "d", "counts"), (axes[1], norm, ".2f", "row-normalised")):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(CLASS_NAMES)):
            for j in range(len(CLASS_NAMES)):
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({name})")
    _save(fig, path)
