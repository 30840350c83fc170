"""CLI verbs of the training side. TensorFlow is imported inside the verbs, never at start-up."""
from __future__ import annotations

import json
from pathlib import Path

import click

from fer_edge.atomic import check_writable
from fer_edge.errors import FerEdgeError
from fer_edge.spec import CLASS_NAMES
from fer_edge.train.data import SPLITS

DATA_HELP = "FER2013 as .npz, challenge CSV or image folder (default: $FER_EDGE_DATA or ../shared/data/fer2013/fer2013.npz)"


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


def _int_tuple(flag: str):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 32,64,128,256",
                                     param_hint=flag) from None
    return parse


@click.command()
@click.option("--data", type=click.Path(), help=DATA_HELP)
@click.option("--arch", type=click.Choice(["seresnet", "baseline"]), help="Architecture [default: seresnet].")
@click.option("--preset", type=click.Choice(["paper", "edge", "edgetpu"]), help="SE-ResNet preset [default: edge].")
@click.option("--widths", callback=_int_tuple("--widths"), help="Override stage widths, e.g. 32,64,128,256.")
@click.option("--blocks", callback=_int_tuple("--blocks"), help="Override blocks per stage, e.g. 2,2,2,2.")
@click.option("--stem-stride", type=int, help="Stride of the stem convolution (1 or 2) [default: 1].")
@click.option("--no-se", is_flag=True, default=None, help="Turn squeeze-and-excitation off.")
@click.option("--epochs", type=int, help="Epochs of the cosine schedule [default: 30; QAT 5]. With --resume: "
                                         "extend (or shorten) the run, recorded in config.json.")
@click.option("--batch-size", type=int, help="[default: 64]")
@click.option("--lr", type=float, help="Peak learning rate [default: 1e-3; QAT 1e-4].")
@click.option("--warmup-epochs", type=float, help="[default: 1]")
@click.option("--label-smoothing", type=float, help="[default: 0.1]")
@click.option("--patience", type=int, help="Early-stopping patience in epochs [default: 10].")
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="[default: auto]")
@click.option("--class-weight", is_flag=True, default=None, help="Weight the loss by inverse class frequency.")
@click.option("--oversample", is_flag=True, default=None, help="Sample classes uniformly each epoch.")
@click.option("--rotation", type=float, help="Max rotation, degrees [default: 10].")
@click.option("--zoom", type=float, help="[default: 0.1]")
@click.option("--shift", type=float, help="[default: 0.1]")
@click.option("--no-flip", is_flag=True, default=None)
@click.option("--erasing", type=float, help="Random-erasing probability [default: 0].")
@click.option("--mixup", type=float, help="Mixup Beta alpha [default: 0 = off].")
@click.option("--teacher", "teachers", multiple=True, metavar="RUN|MODEL|ferplus",
              help="Distil: a finished run, model file or .tflite whose flip-averaged probabilities (or 'ferplus': "
                   "FER+ vote shares) become soft targets, computed once into the run folder; repeat for an ensemble.")
@click.option("--init", type=click.Path(), metavar="RUN|MODEL",
              help="Start from the weights of a finished run, model file or .tflite (the shipped model too) of the "
                   "same network instead of a fresh one, e.g. to fine-tune it on your own faces.")
@click.option("--distill", type=float, help="With --teacher: the teachers' weight in each target [default: 0.5].")
@click.option("--train-limit", type=int, help="Train on a stratified subset of this many images.")
@click.option("--val-limit", type=int, help="Validate on a stratified subset of this many images.")
@click.option("--logical-cpus", type=int, help="Mirror across N logical CPU devices (tests the distributed path).")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--out", type=click.Path(), help="Run folder [default: runs/train].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch checkpoint.")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning of the float run given by --from.")
@click.option("--from", "from_run", type=click.Path(), help="With --qat: the finished float run to fine-tune.")
def train(resume, qat, from_run, **kw):
    """Train a model on FER2013 (select on PublicTest, report PrivateTest).

    With --qat --from RUN: fine-tune RUN's best weights with fake int8 quantization (default 5
    epochs at lr 1e-4, no warm-up), ready for `convert --int8`. With --resume: continue the run in
    --out exactly where it stopped; only --epochs (and --data, for the same data moved) may be given.
    """
    from fer_edge.train import config

    kw["teachers"] = list(kw["teachers"]) or None  # click gives () when the flag is absent
    given = {k: v for k, v in kw.items() if v is not None}
    if "distill" in given and "teachers" not in given and not resume and not qat:
        raise FerEdgeError("--distill: needs --teacher (the run or model whose probabilities to distil)")
    if resume:
        refused = sorted(set(given) - {"out", "epochs", "data"}) + (["from"] if from_run else [])
        if refused:
            raise FerEdgeError(f"{_flag(refused[0])}: a resumed run keeps its config.json; only --epochs "
                               "(to extend it) and --data may be given with --resume")
        from fer_edge.train import trainer

        run = trainer.resume(given.get("out", config.TrainConfig.out), epochs=given.get("epochs"), data=given.get("data"))
    elif qat:
        if not from_run:
            raise FerEdgeError("--qat needs --from RUN (the finished float run to fine-tune)")
        refused = sorted(set(given) - set(config.QAT_OVERRIDABLE) - {"out"})
        if refused:
            raise FerEdgeError(f"{_flag(refused[0])}: a QAT run keeps the network and augmentation of --from "
                               f"{from_run}; it may change only " + ", ".join(map(_flag, config.QAT_OVERRIDABLE)))
        from fer_edge.train import trainer

        run = trainer.start_qat(from_run, given.pop("out", config.TrainConfig.out), **given)
    else:
        if from_run:
            raise FerEdgeError("--from: only with --qat")
        overrides = {k: given.pop(k) for k in ("widths", "blocks", "stem_stride") if k in given}
        if given.pop("no_se", False):
            overrides["se"] = False
        augment = {k: given.pop(k) for k in ("rotation", "zoom", "shift", "erasing", "mixup") if k in given}
        if given.pop("no_flip", False):
            augment["flip"] = False
        if "arch" in given:
            given["model"] = given.pop("arch")
        cfg = config.TrainConfig(overrides=overrides, augment=config.AugmentConfig(**augment), **given).validate()
        check_writable(cfg.out, "--out", folder=True)
        from fer_edge.train.distill import check_teachers
        from fer_edge.train.warm_start import check_init

        check_teachers(cfg.teachers)
        check_init(cfg.init)
        from fer_edge.train import trainer  # TensorFlow loads only once the command line is known to be good

        run = trainer.train(cfg)
    click.echo(f"run folder: {run}")


def _flag(name: str) -> str:
    return {"arch": "--arch", "no_se": "--no-se", "no_flip": "--no-flip", "teachers": "--teacher"}.get(
        name, "--" + name.replace("_", "-"))


@click.command()
@click.argument("model", nargs=-1, required=True, type=click.Path())
@click.option("--data", "data_path", type=click.Path(), help=DATA_HELP)
@click.option("--split", type=click.Choice(SPLITS), default="PrivateTest", show_default=True)
@click.option("--out", type=click.Path(), help="Folder for metrics.json, the report and confusion matrices.")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="flip: average each face's probabilities with its mirror image's.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate a stratified subset of this many images.")
@click.option("--calibration", default="none", show_default=True, metavar="NAME",
              help="A .tflite's calibration stored beside it by `fer-edge calibrate` (e.g. ferplus, neutral).")
def evaluate(model, data_path, split, out, tta, limit, calibration):
    """Evaluate a run folder, Keras model or .tflite (float or int8) on a split.

    Several MODELs are scored as an ensemble: the mean of their probabilities (e.g. the teachers
    of `train --teacher`)."""
    from fer_edge.train.data import load_dataset
    from fer_edge.train.evaluate import evaluate_split, summary_line

    if out:
        check_writable(out, "--out", folder=True)  # before the model and data load
    metrics = evaluate_split(model[0] if len(model) == 1 else list(model), load_dataset(data_path), split, out_dir=out,
                             tta_flip=tta == "flip", limit=limit, calibration=calibration)
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
@click.option("--neutral-target", type=click.FloatRange(0, 1, min_open=True), default=None,
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

    from fer_edge.edge_runtime.calibration import sidecar_path
    from fer_edge.train.calibrate import NEUTRAL_TARGET
    from fer_edge.train.calibrate import calibrate as fit
    from fer_edge.train.calibrate import table
    from fer_edge.train.data import load_dataset

    check_writable(out or sidecar_path(model), "--out")  # before the model runs on two splits
    command = "fer-edge calibrate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    document = fit(model, load_dataset(data_path), command,
                   NEUTRAL_TARGET if neutral_target is None else neutral_target, out)
    for name, entry in document["calibrations"].items():
        click.echo(f"{name}: bias {entry['bias']} temperature {entry['temperature']:g} ({entry['description']})")
    click.echo(table(document))
    click.echo(f"wrote {out or sidecar_path(model)}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def compare(runs):
    """The manual-vs-baseline table from finished runs (Markdown)."""
    from fer_edge.train.compare import comparison_table

    click.echo(comparison_table([Path(r) for r in runs]))
