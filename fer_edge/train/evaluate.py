"""One metrics code path for Keras models, training runs and `.tflite` files (float or int8)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.errors import FerEdgeError
from fer_edge.spec import CLASS_NAMES, preprocess_faces
from fer_edge.train.data import FerDataset
from fer_edge.train.ferplus import ferplus_metrics


class KerasPredictor:
    def __init__(self, model, tta_flip: bool = False):
        self.model, self.tta_flip = model, tta_flip

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = preprocess_faces(images)
        probs = self.model.predict(x, batch_size=256, verbose=0)
        if self.tta_flip:  # the runtime's `--tta flip`: the mean with the mirror image's probabilities
            probs = (probs + self.model.predict(x[:, :, ::-1], batch_size=256, verbose=0)) / 2
        return probs


class TFLitePredictor:
    """Runs a `.tflite` through the edge runtime's classifier, exactly as a device would."""

    def __init__(self, path: Path, num_threads: int | None = None, calibration: str = "none", tta_flip: bool = False):
        from fer_edge.edge_runtime.classifier import ClassifierOptions, EmotionClassifier

        self.classifier = EmotionClassifier(ClassifierOptions(model_path=str(path), num_threads=num_threads,
                                                              tta="flip" if tta_flip else "none",
                                                              calibration=calibration))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.classify(images)


def load_predictor(ref, calibration: str = "none", tta_flip: bool = False):
    """A predictor from a Keras model object, a run folder (float or QAT), a `.keras`/`.h5` file or a `.tflite`.

    `calibration` names one stored beside a `.tflite` by `fer-edge calibrate`; it and `tta_flip` run
    exactly as the runtime's options do (flip averaging first, then the calibration).
    """
    path = Path(ref) if isinstance(ref, (str, Path)) else None
    if calibration != "none" and (path is None or path.suffix != ".tflite"):
        raise FerEdgeError(f"--calibration: applies to a .tflite model (the runtime's option), not {ref}")
    if path is None:
        return KerasPredictor(ref, tta_flip)
    if path.suffix == ".tflite":
        if not path.exists():
            raise FerEdgeError(f"{path}: no such model file")
        return TFLitePredictor(path, calibration=calibration, tta_flip=tta_flip)
    from fer_edge.train.source import load_source

    return KerasPredictor(load_source(path).model, tta_flip)


def predict_probs(predictor, images: np.ndarray) -> np.ndarray:
    return np.asarray(predictor(images), dtype=np.float32)


def compute_metrics(labels: np.ndarray, probs: np.ndarray, leaked: np.ndarray | None = None) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    pred = probs.argmax(axis=1)
    classes = np.arange(len(CLASS_NAMES))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    metrics = {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, pred)),
        "f1_weighted": float(f1_score(labels, pred, labels=classes, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, name in enumerate(CLASS_NAMES)},
        "confusion_matrix": confusion_matrix(labels, pred, labels=classes).tolist(),
    }
    if leaked is not None:
        keep = ~leaked
        metrics["leakage_free"] = {
            "images": int(keep.sum()),
            "accuracy": float(accuracy_score(labels[keep], pred[keep])),
            "f1_macro": float(f1_score(labels[keep], pred[keep], labels=classes, average="macro", zero_division=0)),
        }
    return metrics


def write_report(metrics: dict, labels: np.ndarray, probs: np.ndarray, out_dir: Path, title: str) -> None:
    from sklearn.metrics import classification_report

    from fer_edge.train.plots import plot_confusion

    out_dir = Path(out_dir)
    atomic.write_json(out_dir / "metrics.json", metrics)
    report = classification_report(labels, probs.argmax(axis=1), labels=np.arange(len(CLASS_NAMES)),
                                   target_names=list(CLASS_NAMES), digits=4, zero_division=0)
    atomic.write_text(out_dir / "classification_report.txt", report)
    plot_confusion(np.array(metrics["confusion_matrix"]), out_dir / "confusion_matrix.png", title)


def evaluate_split(model, ds: FerDataset, split: str, out_dir: Path | None = None, tta_flip: bool = False,
                   limit: int | None = None, calibration: str = "none") -> dict:
    """Metrics of `model` on one split (optionally a stratified subset), with the report files.

    `model` may be a list: the models' mean probabilities are scored, as an ensemble (e.g. the
    teachers of a distilled run)."""
    idx = ds.subset(split, limit) if limit else ds.indices(split)
    if len(idx) == 0:
        raise FerEdgeError(f"--split: {split} is empty in {ds.source}")
    images, labels = ds.images[idx], ds.labels[idx].astype(np.int64)
    leaked = ds.leaked(split)
    if leaked is not None and limit:
        leaked = leaked[np.searchsorted(ds.indices(split), idx)]
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if calibration != "none" and len(models) > 1:
        raise FerEdgeError("--calibration: applies to one .tflite model, not an ensemble")
    # Every model loads before any predicts: a bad last path fails in seconds, not after the others ran.
    predictors = [load_predictor(m, calibration, tta_flip) for m in models]
    probs = np.mean([predict_probs(predictor, images) for predictor in predictors], axis=0)
    metrics = {"split": split, "tta_flip": tta_flip, "calibration": calibration, "models": len(models),
               **compute_metrics(labels, probs, leaked)}
    if ds.ferplus_votes is not None and ds.ferplus_votes[idx].any():
        metrics["ferplus"] = ferplus_metrics(ds.ferplus_votes[idx], probs)
    if out_dir is not None:
        write_report(metrics, labels, probs, Path(out_dir), f"{split}")
    return metrics


def summary_line(metrics: dict) -> str:
    line = f"ensemble of {metrics['models']}: " if metrics.get("models", 1) > 1 else ""
    line += (f"{metrics['split']}: accuracy {metrics['accuracy']:.4f}  weighted F1 {metrics['f1_weighted']:.4f}  "
             f"macro F1 {metrics['f1_macro']:.4f}  ({metrics['images']} images)")
    if "leakage_free" in metrics:
        line += f"  leakage-free accuracy {metrics['leakage_free']['accuracy']:.4f}"
    return line
