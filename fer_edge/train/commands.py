"""CLI verbs of the training side. TensorFlow is imported inside the verbs, never at start-up."""
from __future__ import annotations

import json
from pathlib import Path

import click

from fer_edge.spec import CLASS_NAMES

DATA_HELP = "FER2013 as .npz, challenge CSV or image folder (default: $FER_EDGE_DATA or ../shared/data/fer2013/fer2013.npz)"
SPLITS = ("Training", "PublicTest", "PrivateTest")


@click.group()
def data() -> None:
    """Look at a FER2013 source."""


@data.command("inspect")
@click.argument("path", type=click.Path(), required=False)
@click.option("--skip-bad", is_flag=True, help="Skip malformed rows/unreadable images and count them.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_inspect(path, skip_bad, as_json):
    """Per-split and per-class counts, imbalance, blank images, duplicates across splits."""
    from fer_edge.train.data import describe, load_dataset

    report = describe(load_dataset(path, skip_bad=skip_bad))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"source: {report['source']}  ({report['total']} images)")
    for note in report["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"{'split':<12}{'total':>7}" + "".join(f"{c:>10}" for c in CLASS_NAMES) + f"{'max/min':>9}")
    for split, s in report["splits"].items():
        ratio = "-" if s["imbalance_ratio"] is None else f"{s['imbalance_ratio']:.1f}"
        click.echo(f"{split:<12}{s['total']:>7}" + "".join(f"{s['per_class'][c]:>10}" for c in CLASS_NAMES) + f"{ratio:>9}")
    click.echo("blank images (pixel std < 1): " + ", ".join(f"{k} {v}" for k, v in report["blank_images"].items()))
    click.echo("exact duplicates of Training images: " + ", ".join(f"{k.split('_')[0]} {v}" for k, v in report["duplicates"].items()))


@click.command()
def models():
    """List model presets with parameters and multiply-accumulates."""
    from fer_edge.train.models import PRESETS, build_model, count_macs

    click.echo(f"{'model':<10}{'preset':<10}{'params':>12}{'MMACs':>10}  activation  widths")
    rows = [("seresnet", p) for p in PRESETS] + [("baseline", "-")]
    for name, preset in rows:
        m = build_model(name, preset if preset != "-" else "edge")
        cfg = PRESETS.get(preset)
        desc = f"{cfg.activation:<11} {'→'.join(map(str, cfg.widths))}, SE {'on' if cfg.se else 'off'}" if cfg else "relu        32→64→128, flatten + dense 256, no residuals/SE"
        click.echo(f"{name:<10}{preset:<10}{m.count_params():>12,}{count_macs(m) / 1e6:>10.1f}  {desc}")


def _int_tuple(value):
    return tuple(int(v) for v in value.split(",")) if value else None


@click.command()
@click.option("--data", "data_path", type=click.Path(), help=DATA_HELP)
@click.option("--model", type=click.Choice(["seresnet", "baseline"]), default="seresnet", show_default=True)
@click.option("--preset", type=click.Choice(["paper", "edge", "edgetpu"]), default="edge", show_default=True)
@click.option("--widths", help="Override stage widths, e.g. 32,64,128,256.")
@click.option("--blocks", help="Override blocks per stage, e.g. 2,2,2,2.")
@click.option("--stem-stride", type=int)
@click.option("--no-se", is_flag=True, help="Turn squeeze-and-excitation off.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--warmup-epochs", type=float, default=1.0, show_default=True)
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--patience", type=int, default=10, show_default=True, help="Early-stopping patience in epochs.")
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True)
@click.option("--class-weight", is_flag=True, help="Weight the loss by inverse class frequency.")
@click.option("--oversample", is_flag=True, help="Sample classes uniformly each epoch.")
@click.option("--rotation", type=float, default=10.0, show_default=True, help="Max rotation, degrees.")
@click.option("--zoom", type=float, default=0.1, show_default=True)
@click.option("--shift", type=float, default=0.1, show_default=True)
@click.option("--no-flip", is_flag=True)
@click.option("--erasing", type=float, default=0.0, show_default=True, help="Random-erasing probability.")
@click.option("--mixup", type=float, default=0.0, show_default=True, help="Mixup Beta alpha (0 = off).")
@click.option("--train-limit", type=int, help="Train on a stratified subset of this many images.")
@click.option("--val-limit", type=int, help="Validate on a stratified subset of this many images.")
@click.option("--logical-cpus", type=int, default=0, help="Mirror across N logical CPU devices (tests the distributed path).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), default="runs/train", show_default=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch checkpoint.")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning of the float run given by --from.")
@click.option("--from", "from_run", type=click.Path(), help="With --qat: the finished float run to fine-tune.")
def train(data_path, model, preset, widths, blocks, stem_stride, no_se, rotation, zoom, shift, no_flip, erasing,
          mixup, resume, qat, from_run, **kw):
    """Train a model on FER2013 (select on PublicTest, report PrivateTest).

    With --qat --from RUN: fine-tune RUN's best weights with fake int8 quantization (default 5
    epochs at lr 1e-4, no warm-up; --epochs and --lr override), ready for `convert --int8`.
    """
    from fer_edge.train.augment import AugmentConfig
    from fer_edge.train.trainer import TrainConfig
    from fer_edge.train.trainer import train as run_training

    if qat:
        from fer_edge.convert.qat import QAT_EPOCHS, QAT_LR, train_qat

        if not (from_run or resume):
            raise click.UsageError("--qat needs --from RUN (the finished float run to fine-tune)")
        src = click.get_current_context().get_parameter_source
        explicit = {k: kw[k] for k in ("batch_size", "patience", "train_limit", "val_limit", "seed")
                    if src(k) != click.core.ParameterSource.DEFAULT}
        run = train_qat(from_run, kw["out"], epochs=kw["epochs"] if src("epochs").name != "DEFAULT" else QAT_EPOCHS,
                        lr=kw["lr"] if src("lr").name != "DEFAULT" else QAT_LR, resume=resume, data=data_path, **explicit)
        click.echo(f"run folder: {run}")
        return

    overrides = {k: v for k, v in {"widths": _int_tuple(widths), "blocks": _int_tuple(blocks),
                                   "stem_stride": stem_stride, "se": False if no_se else None}.items() if v is not None}
    cfg = TrainConfig(data=data_path, model=model, preset=preset, overrides=overrides,
                      augment=AugmentConfig(flip=not no_flip, rotation=rotation, zoom=zoom, shift=shift,
                                            erasing=erasing, mixup=mixup), **kw)
    run = run_training(cfg, resume=resume)
    click.echo(f"run folder: {run}")


@click.command()
@click.argument("model", type=click.Path())
@click.option("--data", "data_path", type=click.Path(), help=DATA_HELP)
@click.option("--split", type=click.Choice(SPLITS), default="PrivateTest", show_default=True)
@click.option("--out", type=click.Path(), help="Folder for metrics.json, the report and confusion matrices.")
@click.option("--tta-flip", is_flag=True, help="Average predictions with the horizontally flipped face.")
@click.option("--limit", type=int, help="Evaluate a stratified subset of this many images.")
@click.option("--calibration", default="none", show_default=True, metavar="NAME",
              help="A .tflite's calibration stored beside it by `fer-edge calibrate` (e.g. ferplus, neutral).")
def evaluate(model, data_path, split, out, tta_flip, limit, calibration):
    """Evaluate a run folder, Keras model or .tflite (float or int8) on a split."""
    from fer_edge.train.data import load_dataset
    from fer_edge.train.evaluate import evaluate_split, summary_line

    metrics = evaluate_split(model, load_dataset(data_path), split, out_dir=out, tta_flip=tta_flip, limit=limit,
                             calibration=calibration)
    click.echo(summary_line(metrics))
    click.echo(" ".join(f"{c} R={m['recall']:.2f}" for c, m in metrics["per_class"].items()))
    if "ferplus" in metrics:
        from fer_edge.train.ferplus import summary_line as ferplus_line

        click.echo(ferplus_line(metrics["ferplus"]))
    if out:
        click.echo(f"report: {Path(out) / 'metrics.json'}")


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data_path", type=click.Path(), help=DATA_HELP)
@click.option("--neutral-target", type=float, default=None,
              help="Share of FER+-neutral PublicTest faces the `neutral` calibration must put on neutral [0.65].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the calibrations [default: <model>.calibration.json beside the model, where "
                   "the runtime looks for them].")
def calibrate(model, data_path, neutral_target, out):
    """Fit output calibrations of a .tflite on the FER+ view of PublicTest; report them on PrivateTest.

    Writes `ferplus` (per-class bias + temperature fitted to FER+ vote shares) and `neutral` (the
    smallest neutral bias meeting --neutral-target), each with its figures; apply one at run time
    with `--calibration NAME`.
    """
    import shlex
    import sys

    from fer_edge.train.calibrate import NEUTRAL_TARGET
    from fer_edge.train.calibrate import calibrate as fit
    from fer_edge.train.calibrate import table
    from fer_edge.train.data import load_dataset

    command = "fer-edge calibrate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    document = fit(model, load_dataset(data_path), command,
                   NEUTRAL_TARGET if neutral_target is None else neutral_target, out)
    for name, entry in document["calibrations"].items():
        click.echo(f"{name}: bias {entry['bias']} temperature {entry['temperature']:g} ({entry['description']})")
    click.echo(table(document))
    from fer_edge.edge_runtime.calibration import sidecar_path

    click.echo(f"wrote {out or sidecar_path(model)}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def compare(runs):
    """The manual-vs-baseline table from finished runs (Markdown)."""
    from fer_edge.train.compare import comparison_table

    click.echo(comparison_table([Path(r) for r in runs]))
