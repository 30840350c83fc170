"""Build the YuNet face detector as a TFLite file from libfacedetection's published weights.

libfacedetection (Shiqi Yu, BSD-3-Clause, <https://github.com/ShiqiYu/libfacedetection>) ships
YuNet as C arrays in `src/facedetectcnn-data.cpp` and runs it with hand-written kernels. This
rebuilds the same network in Keras from those arrays, as `src/facedetectcnn-model.cpp` wires it,
and converts it to a float32 TFLite file that takes any input size (a multiple of 32), so the edge
runtime can run it with LiteRT on a Pi. The file ships in `fer_edge/assets/detectors/`; this module
is only needed to rebuild it:

    python -m fer_edge.convert.yunet facedetectcnn-data.cpp fer_edge/assets/detectors/face_detection_yunet.tflite

Network (every convolution is either 1x1 point-wise or 3x3 depth-wise, batch norm folded in):
the head is a 3x3 stride-2 convolution (libfacedetection feeds it as a 1x1 convolution on an
im2col of the image); then depth-wise separable units with 2x2 max pools down to strides 8, 16
and 32, a top-down neck (nearest 2x upsampling + add) and, per stride, four heads: class and
objectness logits, box (centre offset and log size, in strides) and five keypoints (eyes, nose
tip, mouth corners). The image is fed as its raw 0-255 values. libfacedetection takes BGR; fer-edge
detects on gray frames, in which B = G = R, so the head's kernel is summed over the colour channels
and the file takes one channel: the same numbers for gray images, for a third of the head's work.

Outputs, one per stride 8, 16, 32: (1, H/s, W/s, 16) = class logit, objectness logit, 4 box
numbers, 10 keypoint numbers (see `fer_edge/edge_runtime/yunet.py` for the decoding).
"""
from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np

from fer_edge import atomic
from fer_edge.edge_runtime.yunet import STRIDES
from fer_edge.errors import FerEdgeError

HEADS = ("cls", "obj", "bbox", "kps")  # output channel order: 1 + 1 + 4 + 10
_ARRAY = re.compile(r"float\s+(\w+)\s*\[([^\]]*)\]\s*=\s*\{([^}]*)\}", re.S)


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """The float arrays of a libfacedetection `facedetectcnn-data.cpp`, by C name."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise FerEdgeError(f"{path}: cannot read libfacedetection weights ({err})") from err
    arrays = {name: np.array([float(v.rstrip("f")) for v in body.split(",") if v.strip()], np.float32)
              for name, _, body in _ARRAY.findall(text)}
    if "backbone__model0_pw_weight" not in arrays:
        raise FerEdgeError(f"{path}: no YuNet weight arrays (expected libfacedetection's facedetectcnn-data.cpp)")
    return arrays


def _pointwise(arrays, name: str, channels: int):
    """Keras Conv2D kernel (1, 1, in, out) and bias of a 1x1 layer stored as [out][in]."""
    weight, bias = arrays[f"{name}_weight"], arrays[f"{name}_bias"]
    return weight.reshape(-1, channels).T[None, None], bias


def _depthwise(arrays, name: str, channels: int):
    """Keras DepthwiseConv2D kernel (3, 3, ch, 1) and bias of a 3x3 layer stored as [tap][ch]."""
    weight, bias = arrays[f"{name}_weight"], arrays[f"{name}_bias"]
    return weight.reshape(3, 3, channels)[..., None], bias


def build_model(arrays: dict[str, np.ndarray]):
    """YuNet in tf-keras with libfacedetection's weights, for gray input of any size (multiple of 32)."""
    from fer_edge.train.tf_setup import tf

    layers = tf.keras.layers

    def pointwise(x, name, relu=False):
        kernel, bias = _pointwise(arrays, name, x.shape[-1])
        conv = layers.Conv2D(kernel.shape[-1], 1, activation="relu" if relu else None, name=name)
        y = conv(x)
        conv.set_weights([kernel, bias])
        return y

    def depthwise(x, name, relu=True):
        kernel, bias = _depthwise(arrays, name, x.shape[-1])
        conv = layers.DepthwiseConv2D(3, padding="same", activation="relu" if relu else None, name=name)
        y = conv(x)
        conv.set_weights([kernel, bias])
        return y

    def separable(x, prefix, relu=True):  # libfacedetection's convolutionDP
        return depthwise(pointwise(x, f"{prefix}_pw"), f"{prefix}_dw", relu)

    def unit(x, prefix):  # convolution4layerUnit
        return separable(separable(x, f"{prefix}_dp1"), f"{prefix}_dp2")

    image = layers.Input((None, None, 1), name="image")
    # Head: 3x3 stride 2, pad 1, over B, G, R; stored as [out][tap * 3 + colour] padded to 32 inputs.
    weight = arrays["backbone__model0_pw_weight"].reshape(16, 32)[:, :27].reshape(16, 3, 3, 3)
    head = layers.Conv2D(16, 3, strides=2, activation="relu", name="backbone_model0_conv")
    x = head(layers.ZeroPadding2D(1, name="backbone_model0_pad")(image))
    head.set_weights([weight.sum(-1).transpose(1, 2, 0)[:, :, None, :], arrays["backbone__model0_pw_bias"]])
    x = separable(x, "backbone__model0_dp")
    x = layers.MaxPooling2D(2, name="backbone_pool0")(x)
    x = unit(unit(x, "backbone__model1"), "backbone__model2")
    levels = []
    for i, model in enumerate(("backbone__model3", "backbone__model4", "backbone__model5")):
        x = unit(layers.MaxPooling2D(2, name=f"backbone_pool{i + 1}")(x), model)
        levels.append(x)
    # Top-down neck: stride 32 first, each level adds the upsampled coarser one before its conv.
    outputs = [None] * 3
    coarser = None
    for level in (2, 1, 0):
        x = levels[level]
        if coarser is not None:
            x = layers.Add(name=f"neck_add{level}")([layers.UpSampling2D(2, name=f"neck_up{level}")(coarser), x])
        x = coarser = separable(x, f"neck__lateral_convs__{level}")
        heads = [separable(x, f"bbox_head__multi_level_{head}__{level}", relu=False) for head in HEADS]
        outputs[level] = layers.Concatenate(name=f"stride{STRIDES[level]}")(heads)
    return tf.keras.Model(image, outputs, name="yunet")


def to_tflite(model) -> bytes:
    from fer_edge.train.tf_setup import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return converter.convert()


@click.command()
@click.argument("weights", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def main(weights: Path, out: Path) -> None:
    """Build OUT (.tflite) from libfacedetection's WEIGHTS (src/facedetectcnn-data.cpp)."""
    try:
        atomic.check_writable(out, "OUT")
        arrays = read_weights(weights)
        try:
            model = build_model(arrays)
        except (KeyError, ValueError) as err:  # an array missing, or of another size than the network's
            raise FerEdgeError(f"{weights}: not the YuNet that facedetectcnn-model.cpp wires ({err})") from None
        data = to_tflite(model)
        atomic.write_bytes(out, data)
    except FerEdgeError as err:
        raise click.ClickException(str(err)) from None
    print(f"{out}: {len(data)} bytes")


if __name__ == "__main__":
    main()
