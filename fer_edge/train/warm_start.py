"""Start a run from a trained model's weights (`train --init MODEL`) instead of a fresh network.

MODEL is a run folder or `.keras`/`.h5` file (weights copied layer by layer), or a `.tflite` file
that `fer-edge convert` made from the same architecture, float32 or int8, the shipped model
included: its weights are the only copy there is of a model whose run folder is gone.

A converted file holds each convolution with its BatchNorm folded in (kernel * gamma / sigma, and
one bias). The Keras network keeps the BatchNorm layer, and in training it normalises by the
batch's statistics, not by stored ones. So each BatchNorm is set to undo exactly what it will do:
its moving mean and variance are the convolution's own output statistics over the training
images, gamma is that standard deviation and beta that mean plus the folded bias. The network then
computes the file's function, in inference and (up to batch noise) in training.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from fer_edge.errors import FerEdgeError

STAT_IMAGES = 2048
"""Training images the BatchNorm statistics are measured on."""
CHECK_IMAGES = 512
MIN_AGREEMENT = 0.9
"""Top-1 agreement with the file the rebuilt network must reach on CHECK_IMAGES training faces: an
int8 file and its dequantized weights in float agree on ~95% of faces; another network, on chance."""

_LAYER = re.compile(r"^[^/;]+/(?:quant_)?(\w+?)/(?:Conv2D|MatMul)")


def check_init(ref: str | None) -> None:
    """Refuse, before any data loads, an --init that does not exist."""
    if ref is not None and not Path(ref).exists():
        raise FerEdgeError(f"--init: {ref} does not exist (give a finished run folder, a .keras/.h5 model or a "
                           ".tflite file of the same network)")


def load_initial_weights(model, ref: str, faces: np.ndarray) -> None:
    """Set `model`'s weights from the model `ref`; `faces`: (N, 48, 48) uint8 training faces."""
    path = Path(ref)
    if path.suffix == ".tflite":
        _from_tflite(model, path, faces[:STAT_IMAGES])
    else:
        _from_keras(model, path)
    print(f"--init: started from the weights of {path}", file=sys.stderr, flush=True)


def _from_keras(model, path: Path) -> None:
    from fer_edge.train.source import load_source

    source = load_source(path)
    if source.qat:
        raise FerEdgeError(f"--init: {path} is a QAT model; give the float run or model it came from")
    theirs = {layer.name: layer for layer in source.model.layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        other = theirs.get(layer.name)
        shapes = [w.shape for w in layer.get_weights()]
        if other is None or [w.shape for w in other.get_weights()] != shapes:
            raise FerEdgeError(f"--init: {path} is another network (layer {layer.name}: "
                               f"{'missing' if other is None else 'other shapes'}); give a model of this run's "
                               "--arch, --preset and widths")
        layer.set_weights(other.get_weights())


def _tflite_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{Keras layer name: (kernel, bias)} of every CONV_2D and FULLY_CONNECTED op, in float and in
    the file's layout (output channels first)."""
    from fer_edge.edge_runtime.errors import ModelError
    from fer_edge.edge_runtime.interpreter import make_interpreter

    try:
        interpreter = make_interpreter(path, num_threads=1)
        interpreter.allocate_tensors()
    except (ModelError, ValueError, RuntimeError) as exc:
        raise FerEdgeError(f"--init: {path} is not a TFLite model this runtime loads ({exc})") from None
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}

    def value(index: int) -> np.ndarray:
        detail = tensors[index]
        data = interpreter.get_tensor(index)
        if data.dtype == np.float32:
            return data
        q = detail["quantization_parameters"]
        shape = [1] * data.ndim
        shape[q["quantized_dimension"] if len(q["scales"]) > 1 else 0] = -1
        scales, zeros = q["scales"].reshape(shape), q["zero_points"].reshape(shape)
        return ((data.astype(np.float64) - zeros) * scales).astype(np.float32)

    weights = {}
    for op in interpreter._get_ops_details():  # the public API lists tensors, not which op uses them
        if op["op_name"] not in ("CONV_2D", "FULLY_CONNECTED") or len(op["inputs"]) < 3:
            continue
        kernel, bias = op["inputs"][1], op["inputs"][2]
        match = _LAYER.match(tensors[kernel]["name"])
        if match:
            weights[match.group(1)] = (value(kernel), value(bias) if bias >= 0 else None)
    return weights


def _from_tflite(model, path: Path, faces: np.ndarray) -> None:
    from fer_edge.spec import preprocess_faces
    from fer_edge.train.tf_setup import tf

    images = preprocess_faces(faces)
    found = _tflite_weights(path)
    layers = tf.keras.layers
    folded = {}  # conv layer name -> its BatchNorm and folded bias
    for layer in model.layers:
        if not isinstance(layer, (layers.Conv2D, layers.Dense)):
            continue
        if layer.name not in found:
            raise FerEdgeError(f"--init: {path} has no layer {layer.name}; give a file converted from a model of this "
                               "run's --arch, --preset and widths")
        kernel, bias = found[layer.name]
        # TFLite keeps output channels first: (out, kh, kw, in) and (out, in).
        kernel = kernel.transpose(1, 2, 3, 0) if isinstance(layer, layers.Conv2D) else kernel.T
        if tuple(kernel.shape) != tuple(layer.kernel.shape):
            raise FerEdgeError(f"--init: {path} layer {layer.name} has shape {kernel.shape}, this network "
                               f"{tuple(layer.kernel.shape)}; give a model of this run's --preset and widths")
        if bias is None:
            bias = np.zeros(kernel.shape[-1], np.float32)
        if layer.use_bias:
            layer.set_weights([kernel, bias])
            continue
        bn = model.get_layer(layer.name.removesuffix("_conv") + "_bn")
        layer.set_weights([kernel])
        folded[layer.name] = (bn, bias)
        # First the identity plus the bias, so the statistics below see the file's activations.
        bn.set_weights([np.ones_like(bias), bias, np.zeros_like(bias), np.full_like(bias, 1 - bn.epsilon)])

    probe = tf.keras.Model(model.input, [model.get_layer(name).output for name in folded])
    # Per-channel sums over batches: the activations of 2,048 faces would take gigabytes at once.
    sums = [np.zeros((2, len(bias))) for _, bias in folded.values()]
    for start in range(0, len(images), 256):
        outputs = probe(images[start:start + 256], training=False)
        for total, z in zip(sums, outputs if len(folded) > 1 else [outputs]):
            z = tf.cast(z, tf.float64)
            total += [tf.reduce_sum(z, axis=(0, 1, 2)).numpy(), tf.reduce_sum(z * z, axis=(0, 1, 2)).numpy()]
    for (bn, bias), total, z in zip(folded.values(), sums, probe.outputs):
        count = len(images) * z.shape[1] * z.shape[2]
        mean = total[0] / count
        var = np.maximum(total[1] / count - mean ** 2, 0)
        bn.set_weights([np.sqrt(var + bn.epsilon), mean + bias, mean, var])
    _check_agreement(model, path, faces[:CHECK_IMAGES], images[:CHECK_IMAGES])


def _check_agreement(model, path: Path, faces: np.ndarray, images: np.ndarray) -> None:
    from fer_edge.train.evaluate import load_predictor

    ours = model.predict(images, batch_size=256, verbose=0).argmax(1)
    theirs = load_predictor(path)(faces).argmax(1)
    agreement = float((ours == theirs).mean())
    print(f"--init: the rebuilt network agrees with {path} on {agreement:.1%} of {len(images)} training faces",
          file=sys.stderr, flush=True)
    if agreement < MIN_AGREEMENT:
        raise FerEdgeError(f"--init: the network rebuilt from {path} agrees with the file on only {agreement:.1%} of "
                           f"faces (expected at least {MIN_AGREEMENT:.0%}); is it a model of this --preset?")
