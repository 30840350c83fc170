"""Fit runtime calibrations of a `.tflite` on the FER+ view of PublicTest and measure them on PrivateTest.

FER2013's labels call many neutral-looking faces sad or angry, and a model trained on them learns
that prior. FER+ (10 annotators per image) sees far more neutral faces. Two calibrations shift the
model's output towards the FER+ view, both fitted on PublicTest only (PrivateTest stays the report):

- `ferplus`: a per-class logit bias and a temperature minimising the cross-entropy against the FER+
  vote shares (a prior-shift correction, fitted by L-BFGS);
- `neutral`: a single neutral logit bias, the smallest that makes at least `neutral_target` of the
  FER+-neutral PublicTest faces come out neutral (the least change that meets that goal).

They are written to the model's sidecar `<model>.calibration.json` with their figures, and the
runtime applies one with `--calibration NAME`.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.edge_runtime.calibration import FORMAT, TEMPERATURE_RANGE, Calibration, sidecar_path
from fer_edge.errors import FerEdgeError
from fer_edge.spec import NUM_CLASSES
from fer_edge.train import ferplus
from fer_edge.train.data import FerDataset
from fer_edge.train.evaluate import compute_metrics

FIT_SPLIT, REPORT_SPLIT = "PublicTest", "PrivateTest"
NEUTRAL_TARGET = 0.65
MAX_NEUTRAL_BIAS = 4.0


def fit_ferplus(probs: np.ndarray, votes: np.ndarray) -> Calibration:
    """Bias and temperature minimising cross-entropy against FER+ vote shares."""
    from scipy.optimize import minimize

    targets, valid = ferplus.distributions(votes)
    probs, targets = probs[valid], targets[valid]

    def loss(params: np.ndarray) -> float:
        log_probs = Calibration(params[:NUM_CLASSES], float(np.exp(params[-1]))).log_probs(probs)
        return float(-(targets * log_probs).sum(axis=1).mean())

    log_temperature = tuple(np.log(TEMPERATURE_RANGE))  # a fit the runtime accepts
    result = minimize(loss, np.zeros(NUM_CLASSES + 1), method="L-BFGS-B",
                      bounds=[(None, None)] * NUM_CLASSES + [log_temperature])
    bias = result.x[:NUM_CLASSES] - result.x[:NUM_CLASSES].mean()  # softmax ignores a common shift
    return Calibration(bias.astype(np.float32), float(np.exp(result.x[-1])))


def fit_neutral(probs: np.ndarray, votes: np.ndarray, target: float) -> tuple[Calibration, bool]:
    """The smallest neutral logit bias (0.01 steps) meeting `target` on FER+-neutral faces; and whether it did."""
    neutral = probs[ferplus.neutral_mask(votes)]
    if len(neutral) == 0:
        raise FerEdgeError(f"--data: no FER+-neutral faces in {FIT_SPLIT} to fit a neutral bias on")
    for step in range(int(MAX_NEUTRAL_BIAS * 100) + 1):
        calibration = Calibration(_neutral_bias(step / 100))
        if (calibration.apply(neutral).argmax(1) == ferplus.NEUTRAL).mean() >= target:
            return calibration, True
    return calibration, False


def _neutral_bias(value: float) -> np.ndarray:
    bias = np.zeros(NUM_CLASSES, np.float32)
    bias[ferplus.NEUTRAL] = value
    return bias


def scores(probs: np.ndarray, labels: np.ndarray, votes: np.ndarray, leaked: np.ndarray | None) -> dict:
    """The figures a calibration is judged by, on one split."""
    fer2013 = compute_metrics(labels, probs, leaked)
    plus = ferplus.ferplus_metrics(votes, probs)
    return {"accuracy": fer2013["accuracy"], "f1_macro": fer2013["f1_macro"],
            "leakage_free_accuracy": fer2013.get("leakage_free", {}).get("accuracy"),
            "ferplus_accuracy": plus["accuracy"], "ferplus_f1_macro": plus["f1_macro"],
            "ferplus_neutral_images": plus["neutral_faces"]["images"],
            "ferplus_neutral_predicted_neutral": plus["neutral_faces"]["predicted_neutral"],
            "ferplus_neutral_predicted_negative": plus["neutral_faces"]["predicted_negative"],
            "ferplus_neutral_predicted_sad": plus["neutral_faces"]["predicted"]["sad"]}


def calibrate(model: Path, ds: FerDataset, command: str, neutral_target: float = NEUTRAL_TARGET,
              out: Path | None = None) -> dict:
    """Fit both calibrations for `model`, measure them, and write the sidecar file; returns its content."""
    from fer_edge.edge_runtime.classifier import ClassifierOptions, EmotionClassifier, file_sha256

    if ds.ferplus_votes is None or not ds.ferplus_votes[ds.indices(FIT_SPLIT)].any():
        raise FerEdgeError(f"--data: {ds.source} has no FER+ votes (`ferplus_votes`) for {FIT_SPLIT}")
    if not 0 < neutral_target <= 1:
        raise FerEdgeError(f"--neutral-target: expected a share in (0, 1], got {neutral_target}")
    classifier = EmotionClassifier(ClassifierOptions(model))
    splits = {}
    for split in (FIT_SPLIT, REPORT_SPLIT):
        idx = ds.indices(split)
        splits[split] = (classifier.classify(ds.images[idx]), ds.labels[idx].astype(np.int64),
                         ds.ferplus_votes[idx], ds.leaked(split))
    probs, _, votes, _ = splits[FIT_SPLIT]
    neutral, reached = fit_neutral(probs, votes, neutral_target)
    fitted = {
        "ferplus": (fit_ferplus(probs, votes), "per-class logit bias and temperature minimising cross-entropy "
                                               f"against FER+ vote shares on {FIT_SPLIT}"),
        "neutral": (neutral, f"smallest neutral logit bias putting >= {neutral_target:.0%} of FER+-neutral "
                             f"{FIT_SPLIT} faces on neutral" + ("" if reached else
                                                                 f" (not reached at the cap {MAX_NEUTRAL_BIAS})")),
    }
    document = {
        "format": FORMAT, "model": Path(model).name, "model_sha256": file_sha256(Path(model)),
        "command": command, "fitted_on": f"{ds.source}, {FIT_SPLIT}", "reported_on": REPORT_SPLIT,
        "date": datetime.date.today().isoformat(),
        "uncalibrated": {split: scores(*values) for split, values in splits.items()},
        "calibrations": {},
    }
    for name, (calibration, description) in fitted.items():
        document["calibrations"][name] = {
            "description": description, "bias": [round(float(b), 5) for b in calibration.bias],
            "temperature": round(calibration.temperature, 5),
            **{split: scores(calibration.apply(p), *rest) for split, (p, *rest) in splits.items()}}
    atomic.write_json(out or sidecar_path(model), document)
    return document


def table(document: dict) -> str:
    """PrivateTest figures with and without each calibration (Markdown)."""
    lines = [f"| calibration ({document['reported_on']}) | FER2013 acc | macro F1 | FER+ acc | FER+ macro F1 | "
             "FER+-neutral → neutral | → negative | → sad |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [("none", document["uncalibrated"])] + list(document["calibrations"].items())
    for name, entry in rows:
        s = entry[document["reported_on"]]
        lines.append(f"| {name} | {s['accuracy']:.1%} | {s['f1_macro']:.3f} | "
                     f"{ferplus.figure(s['ferplus_accuracy'], '.1%')} | {ferplus.figure(s['ferplus_f1_macro'], '.3f')} | "
                     f"{s['ferplus_neutral_predicted_neutral']:.1%} | "
                     f"{s['ferplus_neutral_predicted_negative']:.1%} | {s['ferplus_neutral_predicted_sad']:.1%} |")
    return "\n".join(lines)
