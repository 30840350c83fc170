"""CLI verbs of the conversion side: convert, inspect, benchmark.

TensorFlow is imported inside `convert` and `benchmark` only; `inspect` needs just a TFLite runtime,
so it also runs on the device.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import click

from fer_edge import atomic
from fer_edge.convert.benchmark import DEFAULT_MAX_ACC_DROP, DEFAULT_MAX_F1_DROP
from fer_edge.convert.export import DEFAULT_CALIBRATION
from fer_edge.errors import FerEdgeError
from fer_edge.train.commands import DATA_HELP
from fer_edge.train.data import SPLITS


def default_out(model: Path, int8: bool, batch: int = 1) -> Path:
    suffix = ("int8" if int8 else "float32") + (f"_b{batch}" if batch != 1 else "")
    return model / f"model_{suffix}.tflite" if model.is_dir() else model.with_name(f"{model.stem}_{suffix}.tflite")


@click.command()
@click.argument("model", type=click.Path())
@click.option("--int8/--float", "int8", default=True, show_default=True,
              help="Full-integer int8 (QAT ranges, or calibrated on Training faces) or float32.")
@click.option("--out", type=click.Path(), help="Output .tflite [default: model_int8.tflite in a run folder, "
                                               "else <model>_int8.tflite beside it].")
@click.option("--data", "data_path", type=click.Path(), help=DATA_HELP)
@click.option("--calibration", type=int, default=DEFAULT_CALIBRATION, show_default=True,
              help="Training faces that calibrate post-training int8 ranges (float models only).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration draw.")
@click.option("--name", help="Model name in the embedded metadata [default: the Keras model's name].")
@click.option("--model-version", default="1", show_default=True, help="Model version in the embedded metadata.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fixed faces per invoke. 2 runs flip averaging (`--tta flip`) in one invoke.")
@click.option("--edgetpu", is_flag=True, help="Then compile for the Coral Edge TPU with edgetpu_compiler.")
def convert(model, int8, out, data_path, calibration, seed, name, model_version, batch, edgetpu):
    """Convert a run folder or Keras model to .tflite (int8: fixed batch, every op int8)."""
    from fer_edge.convert import edgetpu as tpu
    from fer_edge.convert.export import export, input_maps_raw_pixels
    from fer_edge.train.source import load_source
    from fer_edge.train.data import load_dataset

    if edgetpu:
        if not int8:
            raise FerEdgeError("--edgetpu: the Edge TPU runs int8 models only; drop --float")
        tpu.require_compiler()  # before a conversion whose result could not be compiled anyway
    out = atomic.check_writable(out or default_out(Path(model), int8, batch), "--out")  # before minutes of conversion
    source = load_source(model)
    dataset = load_dataset(data_path) if int8 and not source.qat else None
    result = export(source, out, int8=int8, dataset=dataset, calibration=calibration, seed=seed, name=name,
                    version=model_version, batch=batch)
    report = result.report
    click.echo(f"wrote {result.path} ({result.quantization}, {report.size_bytes / 1024:.1f} KiB, "
               f"{len(report.ops)} ops, {report.macs / 1e6:.1f} M MACs)")
    click.echo(tensor_line("input", report.input))
    click.echo(tensor_line("output", report.output))
    if int8:
        click.echo("input maps a raw pixel p to p - 128 exactly (scale 1/255, zero-point -128)"
                   if input_maps_raw_pixels(report) else
                   "note: input quantization is not scale 1/255, zero-point -128; feed it as its metadata says")
    if edgetpu:
        echo_edgetpu_plan(report)
        click.echo(f"wrote {tpu.compile_model(result.path)}")


def tensor_line(role: str, t) -> str:
    return (f"{role:<6} {t.name}: {t.dtype} {list(t.shape)} "
            + (f"scale {t.scale:.8g} zero-point {t.zero_point}" if t.dtype != "float32" else "(float)"))


def echo_edgetpu_plan(report) -> None:
    from fer_edge.convert.edgetpu import RESTRICTIONS, plan

    p = plan(report)
    if p.cut_at is None:
        click.echo(f"Edge TPU: all {len(report.ops)} ops are in Coral's supported table")
    else:
        after = len(report.ops) - p.mapped
        click.echo(f"Edge TPU: {p.mapped} of {len(report.ops)} ops would map; the graph is cut at op "
                   f"{p.cut_at.index} {p.cut_at.name}, which with the {after - 1} ops after it runs on the CPU")
        counts = Counter(op.name if op.int8 else f"{op.name} (not int8)" for op in p.unsupported)
        click.echo("  not mappable: " + ", ".join(f"{n} x{c}" for n, c in counts.items()))
    for name in sorted({op.name for op in p.restricted}):
        click.echo(f"  check: {name} maps only with {RESTRICTIONS[name]}")


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--require-int8", is_flag=True, help="Exit 1, naming the ops, unless every op and tensor I/O is int8.")
@click.option("--target", type=click.Choice(["cpu", "edgetpu"]), default="cpu", show_default=True,
              help="edgetpu: also list the ops the Edge TPU would not map and where it would cut the graph.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_command(model, require_int8, target, as_json):
    """Tensors, op table with dtypes, size and MACs of a .tflite (needs only a TFLite runtime)."""
    from dataclasses import asdict

    from fer_edge.convert.inspect import inspect_model

    report = inspect_model(model)
    if as_json:
        data = {**asdict(report), "path": str(report.path), "fully_int8": report.fully_int8}
        if target == "edgetpu":
            from fer_edge.convert.edgetpu import plan

            data["edgetpu"] = asdict(plan(report))
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        meta = report.metadata or {}
        click.echo(f"{report.path}: {report.size_bytes / 1024:.1f} KiB, {report.macs / 1e6:.2f} M MACs, "
                   f"{len(report.ops)} ops" + (f", {meta.get('name')} v{meta.get('version')} "
                                               f"({meta.get('quantization')})" if meta else ", no fer-edge metadata"))
        click.echo(tensor_line("input", report.input))
        click.echo(tensor_line("output", report.output))
        click.echo(f"{'#':>4}  {'op':<22}inputs -> outputs")
        for op in report.ops:
            click.echo(f"{op.index:>4}  {op.name:<22}{', '.join(op.input_dtypes)} -> {', '.join(op.output_dtypes)}"
                       + ("" if op.int8 else "   <- not int8"))
        click.echo("fully int8: " + ("yes" if report.fully_int8 else "no"))
        if target == "edgetpu":
            echo_edgetpu_plan(report)
    if require_int8 and not report.fully_int8:
        raise FerEdgeError(f"{report.path}: not fully int8: " + "; ".join(report.int8_problems()))


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--data", "data_path", type=click.Path(), help=DATA_HELP)
@click.option("--split", type=click.Choice(SPLITS), default="PrivateTest", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Use a stratified subset of this many images of the split.")
@click.option("--invokes", type=click.IntRange(min=0), default=100, show_default=True, help="Invokes per latency median (0: skip).")
@click.option("--max-acc-drop", type=float, default=DEFAULT_MAX_ACC_DROP, show_default=True,
              help="Budget: accuracy points an int8 model may lose against the float model.")
@click.option("--max-f1-drop", type=float, default=DEFAULT_MAX_F1_DROP, show_default=True,
              help="Budget: macro F1 an int8 model may lose against the float model.")
@click.option("--out", "json_out", type=click.Path(), help="Also write the results as JSON to this file.")
def benchmark(models, data_path, split, limit, invokes, max_acc_drop, max_f1_drop, json_out):
    """Compare float and int8 models on the same faces; exit 1 when an int8 model breaks a budget."""
    from fer_edge.convert.benchmark import benchmark as run_benchmark
    from fer_edge.convert.benchmark import budget_violations, reference_row, table
    from fer_edge.train.data import load_dataset

    for flag, budget in (("--max-acc-drop", max_acc_drop), ("--max-f1-drop", max_f1_drop)):
        if not math.isfinite(budget):  # nan would pass every comparison: the budget would never fail
            raise FerEdgeError(f"{flag}: {budget} is not allowed; give a finite number")
    if json_out:
        atomic.check_writable(json_out, "--out")
    ds = load_dataset(data_path)
    idx = ds.subset(split, limit) if limit else ds.indices(split)
    if len(idx) == 0:
        raise FerEdgeError(f"--split: {split} is empty in {ds.source}")
    rows = run_benchmark(models, ds.images[idx], ds.labels[idx].astype("int64"), invokes)
    problems = budget_violations(rows, max_acc_drop, max_f1_drop)
    reference = reference_row(rows)
    click.echo(f"{split}: {len(idx)} images of {ds.source}; agreement against "
               f"{reference.model if reference else 'nothing (no float model given)'}")
    click.echo(table(rows))
    if json_out:
        atomic.write_json(json_out, {
            "split": split, "images": int(len(idx)), "data": ds.source,
            "reference": reference.model if reference else None, "models": [r.to_dict() for r in rows],
            "budget": {"max_acc_drop": max_acc_drop, "max_f1_drop": max_f1_drop, "violations": problems}})
    if reference is None and any(r.int8 for r in rows):
        click.echo("budget not checked: give the float model too", err=True)
    if problems:
        raise FerEdgeError("budget exceeded:\n" + "\n".join(problems))
