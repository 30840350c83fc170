"""Int8 accuracy budget: float Keras vs float32 TFLite vs PTQ int8 vs QAT int8 on the same faces.

Builds whatever a run folder is missing (`model_float32.tflite`, `model_int8.tflite`; with
`--qat-run`, that run's `model_int8.tflite`), then runs `fer-edge benchmark` on all of them: a
table, optional JSON, and exit status 1 when an int8 model loses more than the budget.

    python benchmarks/int8_budget.py --run runs/edge_v1 --qat-run runs/edge_v1_qat --out budget.json
"""
from __future__ import annotations

from pathlib import Path

import click

from fer_edge.convert.benchmark import DEFAULT_MAX_ACC_DROP, DEFAULT_MAX_F1_DROP
from fer_edge.convert.commands import DATA_HELP, SPLITS, benchmark
from fer_edge.convert.export import DEFAULT_CALIBRATION
from fer_edge.errors import FerEdgeError


def build_missing(run: Path, int8: bool, data_path, calibration: int, rebuild: bool) -> Path:
    from fer_edge.convert.export import export
    from fer_edge.train.source import load_source
    from fer_edge.train.data import load_dataset

    out = run / f"model_{'int8' if int8 else 'float32'}.tflite"
    if rebuild or not out.exists():
        source = load_source(run)
        dataset = load_dataset(data_path) if int8 and not source.qat else None
        click.echo(f"building {export(source, out, int8=int8, dataset=dataset, calibration=calibration).path}")
    return out


@click.command()
@click.option("--run", "run", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Float training run folder.")
@click.option("--qat-run", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="QAT run folder fine-tuned from --run.")
@click.option("--data", "data_path", type=click.Path(), help=DATA_HELP)
@click.option("--split", type=click.Choice(SPLITS), default="PrivateTest", show_default=True)
@click.option("--limit", type=int, help="Use a stratified subset of this many images of the split.")
@click.option("--calibration", type=int, default=DEFAULT_CALIBRATION, show_default=True, help="Training faces for PTQ calibration.")
@click.option("--invokes", type=int, default=200, show_default=True, help="Invokes per latency median.")
@click.option("--max-acc-drop", type=float, default=DEFAULT_MAX_ACC_DROP, show_default=True)
@click.option("--max-f1-drop", type=float, default=DEFAULT_MAX_F1_DROP, show_default=True)
@click.option("--out", "json_out", type=click.Path(), help="Write the results as JSON to this file.")
@click.option("--rebuild", is_flag=True, help="Convert again even where the .tflite files exist.")
@click.pass_context
def main(ctx, run, qat_run, data_path, split, limit, calibration, invokes, max_acc_drop, max_f1_drop, json_out, rebuild):
    """Measure what int8 conversion costs a run, against an accuracy and macro-F1 budget."""
    try:
        models = [str(run), str(build_missing(run, False, data_path, calibration, rebuild)),
                  str(build_missing(run, True, data_path, calibration, rebuild))]
        if qat_run:
            models.append(str(build_missing(qat_run, True, data_path, calibration, rebuild)))
        ctx.invoke(benchmark, models=models, data_path=data_path, split=split, limit=limit, invokes=invokes,
                   max_acc_drop=max_acc_drop, max_f1_drop=max_f1_drop, json_out=json_out)
    except FerEdgeError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
