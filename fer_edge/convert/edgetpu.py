"""Coral Edge TPU: which ops the compiler would map, where it would cut the graph, and compiling.

The compiler maps ops in execution order until the first one it cannot run; that op and
everything after it stay on the CPU. The op list is Coral's table of supported operations;
`edgetpu_compiler` itself stays the authority (it also rejects ops for their shapes or versions).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fer_edge import atomic, metadata
from fer_edge.convert.inspect import ModelReport, OpInfo
from fer_edge.errors import FerEdgeError

EDGETPU_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAX_POOL_2D", "MAXIMUM", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU",
    "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT",
    "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
}
# Supported only in some forms; the compiler decides per op.
RESTRICTIONS = {
    "MEAN": "reduction along height and/or width only",
    "FULLY_CONNECTED": "default weights format, one-dimensional output",
    "CONCATENATION": "no fused activation",
    "AVERAGE_POOL_2D": "no fused activation",
    "MAX_POOL_2D": "no fused activation",
}
COMPILER = "edgetpu_compiler"
INSTALL_HINT = (
    "edgetpu_compiler is not on PATH. It comes only from Coral's apt repository for x86-64 Debian/Ubuntu:\n"
    "  curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -\n"
    '  echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" | '
    "sudo tee /etc/apt/sources.list.d/coral-edgetpu.list\n"
    "  sudo apt-get update && sudo apt-get install edgetpu-compiler\n"
    "then run this command again (or run edgetpu_compiler on the int8 .tflite on such a machine)."
)


@dataclass
class EdgeTpuPlan:
    unsupported: list[OpInfo]
    """Ops the Edge TPU cannot run: not in Coral's table, or not int8."""
    cut_at: OpInfo | None
    """The first unsupported op in execution order: it and every op after it run on the CPU."""
    mapped: int
    """Ops before the cut, the ones the compiler would place on the Edge TPU."""
    restricted: list[OpInfo]
    """Mapped ops the compiler accepts only in some forms (see RESTRICTIONS)."""


def plan(report: ModelReport) -> EdgeTpuPlan:
    unsupported = [op for op in report.ops if op.name not in EDGETPU_OPS or not op.int8]
    cut_at = unsupported[0] if unsupported else None
    mapped = cut_at.index if cut_at else len(report.ops)
    restricted = [op for op in report.ops[:mapped] if op.name in RESTRICTIONS]
    return EdgeTpuPlan(unsupported, cut_at, mapped, restricted)


def require_compiler() -> str:
    compiler = shutil.which(COMPILER)
    if compiler is None:
        raise FerEdgeError(INSTALL_HINT)
    return compiler


def compile_model(tflite: str | Path, out_dir: str | Path | None = None) -> Path:
    """Run edgetpu_compiler on an int8 model; returns the `*_edgetpu.tflite` it writes."""
    compiler = require_compiler()
    tflite = Path(tflite)
    out_dir = Path(out_dir) if out_dir else tflite.parent
    done = subprocess.run([compiler, "--out_dir", str(out_dir), str(tflite)], capture_output=True, text=True)
    if done.returncode != 0:
        raise FerEdgeError(f"{tflite}: edgetpu_compiler failed: {(done.stderr or done.stdout).strip()}")
    compiled = out_dir / f"{tflite.stem}_edgetpu.tflite"
    meta = metadata.read(tflite)
    if meta is not None and metadata.read(compiled) is None:
        # The compiler rewrites the flatbuffer without our trailing archive; the runtime needs the metadata.
        atomic.write_bytes(compiled, metadata.embed(compiled.read_bytes(), {**meta, "compiled_for": "edgetpu"}))
    return compiled
