"""Float vs int8 on the same faces: accuracy, F1, agreement with the float model, size, latency.

Metrics come from the training side's one code path (`fer_edge.train.evaluate`), so a number
here means what it means in `fer-edge evaluate`.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fer_edge import spec
from fer_edge.errors import FerEdgeError

DEFAULT_MAX_ACC_DROP = 1.0  # accuracy points
DEFAULT_MAX_F1_DROP = 0.01  # macro F1


@dataclass
class Row:
    model: str
    format: str
    """keras or tflite."""
    quantization: str
    """float32, qat (a QAT Keras model), ptq-int8, qat-int8, or int8 for a file without fer-edge metadata."""
    accuracy: float
    f1_weighted: float
    f1_macro: float
    recall: dict[str, float]
    agreement: float | None = None
    """Share of faces whose top-1 class equals the float reference model's."""
    size_bytes: int | None = None
    latency_ms: float | None = None
    """Median single-thread invoke time (TFLite only)."""
    top1: np.ndarray | None = field(default=None, repr=False)

    @property
    def int8(self) -> bool:
        return self.quantization.endswith("int8")


    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "top1"}


@dataclass
class Loaded:
    """A model ready to score: how to predict with it and what it is."""
    path: Path
    predictor: object
    format: str
    quantization: str
    size_bytes: int | None


def load(ref: str | Path) -> Loaded:
    """Load one model (run folder, .keras/.h5 or .tflite); FerEdgeError naming it when it cannot."""
    from fer_edge.train.evaluate import load_predictor

    path = Path(ref)
    if path.suffix == ".tflite":
        from fer_edge.convert.inspect import inspect_model

        report = inspect_model(path)
        quantization = (report.metadata or {}).get("quantization") or (
            "float32" if report.input.dtype == "float32" else "int8")
        return Loaded(path, load_predictor(path), "tflite", quantization, report.size_bytes)
    from fer_edge.train.source import load_source

    source = load_source(path)
    return Loaded(path, load_predictor(source.model), "keras", "qat" if source.qat else "float32", None)


def measure(model: Loaded, images: np.ndarray, labels: np.ndarray, latency_runs: int = 100) -> Row:
    """Score one loaded model on uint8 faces with the shared metrics."""
    from fer_edge.train.evaluate import compute_metrics, predict_probs

    latency = latency_ms(model.path, images[0], latency_runs) if latency_runs and model.format == "tflite" else None
    probs = predict_probs(model.predictor, images)
    m = compute_metrics(labels, probs)
    return Row(str(model.path), model.format, model.quantization, m["accuracy"], m["f1_weighted"], m["f1_macro"],
               {name: c["recall"] for name, c in m["per_class"].items()}, size_bytes=model.size_bytes,
               latency_ms=latency, top1=probs.argmax(axis=1))


def latency_ms(path: Path, face: np.ndarray, runs: int) -> float:
    """Median wall time of `runs` single-thread invokes on one real face, after a warm-up."""
    from fer_edge.edge_runtime.interpreter import make_interpreter

    interpreter = make_interpreter(path, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = spec.preprocess_faces(face[None])
    if detail["dtype"] != np.float32:
        x = spec.quantize(x, *detail["quantization"], detail["dtype"])
    interpreter.set_tensor(detail["index"], x)
    for _ in range(min(10, runs)):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def benchmark(refs, images: np.ndarray, labels: np.ndarray, latency_runs: int = 100) -> list[Row]:
    """Measure every model; agreement is against `reference_row`."""
    if not refs:
        raise FerEdgeError("MODEL: give at least one model (run folder, .keras/.h5 or .tflite)")
    models = [load(ref) for ref in refs]  # every model loads before any is measured: a bad last one fails at once
    rows = [measure(model, images, labels, latency_runs) for model in models]
    reference = reference_row(rows)
    if reference is not None:
        for row in rows:
            row.agreement = float(np.mean(row.top1 == reference.top1))
    return rows


def reference_row(rows: list[Row]) -> Row | None:
    """The float model the others are compared with: float32 Keras, else float32 TFLite, else a QAT
    Keras model (still float arithmetic: then the comparison measures its own conversion)."""
    floats = sorted((r for r in rows if r.quantization in ("float32", "qat")),
                    key=lambda r: (r.quantization != "float32", r.format != "keras"))
    return floats[0] if floats else None


def budget_violations(rows: list[Row], max_acc_drop: float = DEFAULT_MAX_ACC_DROP,
                      max_f1_drop: float = DEFAULT_MAX_F1_DROP) -> list[str]:
    """One line per int8 model whose drop from the float reference exceeds a budget."""
    reference = reference_row(rows)
    if reference is None:
        return []
    problems = []
    for row in rows:
        if not row.int8:
            continue
        acc_drop = (reference.accuracy - row.accuracy) * 100
        f1_drop = reference.f1_macro - row.f1_macro
        if acc_drop > max_acc_drop:
            problems.append(f"{row.model}: accuracy drop {acc_drop:.2f} points exceeds --max-acc-drop {max_acc_drop:g}")
        if f1_drop > max_f1_drop:
            problems.append(f"{row.model}: macro F1 drop {f1_drop:.4f} exceeds --max-f1-drop {max_f1_drop:g}")
    return problems


def table(rows: list[Row]) -> str:
    """Markdown: the summary, then per-class recall."""
    def fmt(value, pattern):
        return "-" if value is None else format(value, pattern)

    lines = ["| model | format | quantization | accuracy | weighted F1 | macro F1 | agreement | size KiB | latency ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = None if r.size_bytes is None else r.size_bytes / 1024
        lines.append(f"| {r.model} | {r.format} | {r.quantization} | {r.accuracy:.4f} | {r.f1_weighted:.4f} | "
                     f"{r.f1_macro:.4f} | {fmt(r.agreement, '.4f')} | {fmt(size, '.1f')} | {fmt(r.latency_ms, '.3f')} |")
    lines += ["", "| model | " + " | ".join(spec.CLASS_NAMES) + " |", "|---|" + "---|" * spec.NUM_CLASSES]
    lines += [f"| {r.model} | " + " | ".join(f"{r.recall[c]:.3f}" for c in spec.CLASS_NAMES) + " |" for r in rows]
    return "\n".join(lines)
