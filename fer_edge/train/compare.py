"""The deck's comparison table (manual SE-ResNet vs shallow baseline) from measured runs."""
from __future__ import annotations

from pathlib import Path

from fer_edge.train import run as runs


def run_row(run: Path) -> dict:
    cfg = runs.config_dict(run)
    final = runs.read_json(run / runs.FINAL_METRICS)
    name = cfg["model"] + (f" ({cfg['preset']})" if cfg["model"] == "seresnet" else "")
    if cfg.get("qat_from"):
        name += ", QAT"
    return {"run": run.name, "model": name, "params": cfg["params"], "macs": cfg["macs"],
            "epochs": final["epochs_run"], **{f"{s}_{k}": final[s][k] for s in ("PublicTest", "PrivateTest")
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
