"""The deck's comparison table (manual SE-ResNet vs shallow baseline) from measured runs."""
from __future__ import annotations

from pathlib import Path

from fer_edge.train import run as runs


def run_row(run: Path) -> dict:
    # Every value the table prints, checked: a damaged file is one line naming it and the key.
    cfg, final = runs.read_values(run / runs.CONFIG), runs.read_values(run / runs.FINAL_METRICS)
    model = cfg("model", str)
    name = model + (f" ({cfg('preset', str)})" if model == "seresnet" else "")
    if runs.is_qat(run):
        name += ", QAT"
    return {"run": run.name, "model": name, "params": cfg("params", int), "macs": cfg("macs"),
            "epochs": final("epochs_run", int), **{f"{s}_{k}": final(f"{s}.{k}") for s in ("PublicTest", "PrivateTest")
                                                  for k in ("accuracy", "f1_weighted", "f1_macro")}}


def comparison_table(runs: list[Path]) -> str:
    rows = [run_row(r) for r in runs]
    lines = ["| run | model | params | MMACs | epochs | PublicTest acc | PrivateTest acc | weighted F1 | macro F1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['model']} | {r['params']:,} | {r['macs'] / 1e6:.0f} | {r['epochs']} | "
                     f"{r['PublicTest_accuracy']:.1%} | {r['PrivateTest_accuracy']:.1%} | "
                     f"{r['PrivateTest_f1_weighted']:.3f} | {r['PrivateTest_f1_macro']:.3f} |")
    return "\n".join(lines)
