"""What is inside a `.tflite`: its tensors, its ops in execution order with their dtypes, its cost.

Read through the edge runtime's interpreter (LiteRT, tflite-runtime or tf.lite, whichever is
installed), never allocated, so XNNPACK has not yet folded the ops into one DELEGATE node and the
same check runs on a Raspberry Pi without TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_edge import metadata

# Requantizing ops the converter inserts where a float value crosses into an int8 region: inside
# a full-integer graph they mean some part of it was not quantized.
BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    def quantization_dict(self) -> dict:
        return {"dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}


@dataclass
class OpInfo:
    index: int
    name: str
    input_dtypes: list[str]
    output_dtypes: list[str]

    @property
    def int8(self) -> bool:
        """int8 results, no float operand (int32 biases and axes are part of int8 kernels)."""
        return (self.name not in BOUNDARY_OPS and all(d == "int8" for d in self.output_dtypes)
                and not any(d.startswith("float") for d in self.input_dtypes))


@dataclass
class ModelReport:
    path: Path
    size_bytes: int
    input: TensorInfo
    output: TensorInfo
    ops: list[OpInfo]
    macs: int
    metadata: dict | None = field(default=None, repr=False)

    def non_int8_ops(self) -> list[OpInfo]:
        return [op for op in self.ops if not op.int8]

    @property
    def fully_int8(self) -> bool:
        return self.input.dtype == "int8" and self.output.dtype == "int8" and not self.non_int8_ops()

    def int8_problems(self) -> list[str]:
        """One line per reason the model is not fully int8, ops grouped by kind (empty when it is)."""
        problems = [f"{role} tensor is {t.dtype}" for role, t in (("input", self.input), ("output", self.output))
                    if t.dtype != "int8"]
        groups: dict[str, list[int]] = {}
        for op in self.non_int8_ops():
            groups.setdefault(f"{op.name} ({', '.join(op.input_dtypes)} -> {', '.join(op.output_dtypes)})", []).append(op.index)
        return problems + [f"{kind} at op {', '.join(map(str, indices))}" for kind, indices in groups.items()]


def inspect_model(path: str | Path) -> ModelReport:
    """Parse a `.tflite` file; a missing or corrupt file raises ModelError (a FerEdgeError) naming it."""
    from fer_edge.edge_runtime.interpreter import make_interpreter, reading_model

    path = Path(path)
    interpreter = make_interpreter(path, num_threads=1)
    with reading_model(path, "read"):  # names, indices and shapes of a damaged file fail only here
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        ops = interpreter._get_ops_details()  # the one listing every runtime has; execution order
        return ModelReport(
            path=path,
            size_bytes=path.stat().st_size,
            input=_tensor_info(interpreter.get_input_details()[0]),
            output=_tensor_info(interpreter.get_output_details()[0]),
            ops=[OpInfo(int(op["index"]), op["op_name"], _dtypes(op["inputs"], tensors),
                        _dtypes(op["outputs"], tensors)) for op in ops],
            macs=sum(_macs(op, tensors) for op in ops),
            metadata=metadata.read(path),
        )


def _tensor_info(detail: dict) -> TensorInfo:
    scale, zero_point = detail["quantization"]
    return TensorInfo(detail["name"], tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name,
                      float(scale), int(zero_point))


def _dtypes(indices, tensors: dict) -> list[str]:
    return [np.dtype(tensors[i]["dtype"]).name for i in indices if i >= 0]  # -1: an omitted optional input


def _macs(op: dict, tensors: dict) -> int:
    """Multiply-accumulates of one op, counted like `train.models.count_macs` (convs and dense)."""
    name = op["op_name"]
    if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        return 0
    weights = tensors[op["inputs"][1]]["shape"]
    out = tensors[op["outputs"][0]]["shape"]
    if name == "FULLY_CONNECTED":  # weights (units, in), one output row per batch item
        return int(np.prod(weights)) * int(np.prod(out[:-1]))
    # Conv weights (out_ch, kh, kw, in_ch), depthwise (1, kh, kw, ch): each meets every output pixel.
    return int(np.prod(weights)) * int(out[1]) * int(out[2])
