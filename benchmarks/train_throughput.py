"""Training throughput: images/s for the paper / edge SE-ResNet and the baseline, float32 vs bfloat16.

    python benchmarks/train_throughput.py [--steps 20] [--batch-size 64] [--models paper,edge,baseline]

Each (model, precision) runs in its own process (a precision policy is process-wide), times
`--steps` training steps after warm-up steps that absorb tracing, and prints a table.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import click
import numpy as np


def measure(model: str, precision: str, steps: int, batch_size: int) -> float:
    from fer_edge.train.models import build_model
    from fer_edge.train.trainer import set_precision
    from fer_edge.train.tf_setup import tf

    set_precision(precision)
    net = build_model("baseline") if model == "baseline" else build_model("seresnet", model)
    net.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, 48, 48, 1), dtype=np.float32)
    y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, batch_size)]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    net.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # tracing and kernel selection
    start = time.perf_counter()
    net.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


@click.command()
@click.option("--models", default="paper,edge,baseline", show_default=True)
@click.option("--precisions", default="float32,bfloat16", show_default=True)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--one", hidden=True, help="internal: measure one model:precision and print JSON")
def main(models, precisions, steps, batch_size, one):
    if one:
        model, precision = one.split(":")
        print(json.dumps({"images_per_s": measure(model, precision, steps, batch_size)}))
        return
    rows = []
    for model in models.split(","):
        speeds = {}
        for precision in precisions.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", f"{model}:{precision}", "--steps", str(steps),
                                  "--batch-size", str(batch_size)], capture_output=True, text=True, check=True)
            speeds[precision] = json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]
            print(f"{model} {precision}: {speeds[precision]:.0f} img/s", file=sys.stderr)
        rows.append((model, speeds))
    names = precisions.split(",")
    print("| model | " + " | ".join(f"{p} img/s" for p in names) + " | speed-up |")
    print("|---|" + "---:|" * (len(names) + 1))
    for model, speeds in rows:
        ratio = speeds[names[-1]] / speeds[names[0]] if len(names) > 1 else 1.0
        print(f"| {model} | " + " | ".join(f"{speeds[p]:.0f}" for p in names) + f" | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
