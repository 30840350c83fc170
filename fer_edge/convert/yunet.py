"""Build the YuNet face detector as a TFLite file from libfacedetection's published weights.

libfacedetection (Shiqi Yu, BSD-3-Clause, <https://github.com/ShiqiYu/libfacedetection>) ships
YuNet as C arrays in `src/facedetectcnn-data.cpp` and runs it with hand-written kernels. This
rebuilds the same network in Keras from those arrays, as `src/facedetectcnn-model.cpp` wires it,
and converts it to a TFLite file that takes any input size (a multiple of 32), so the edge runtime
can run it with LiteRT on a Pi. The file ships in `fer_edge/assets/detectors/`; this module is only
needed to rebuild it:

    python -m fer_edge.convert.yunet facedetectcnn-data.cpp fer_edge/assets/detectors/face_detection_yunet.tflite --int8

Network (every convolution is either 1x1 point-wise or 3x3 depth-wise, batch norm folded in):
the head is a 3x3 stride-2 convolution (libfacedetection feeds it as a 1x1 convolution on an
im2col of the image); then depth-wise separable units with 2x2 max pools down to strides 8, 16
and 32, a top-down neck (nearest 2x upsampling + add) and, per stride, four heads: class and
objectness logits, box (centre offset and log size, in strides) and five keypoints (eyes, nose
tip, mouth corners). The image is fed as its raw 0-255 values. libfacedetection takes BGR; fer-edge
detects on gray frames, in which B = G = R, so the head's kernel is summed over the colour channels
and the file takes one channel: the same numbers for gray images, for a third of the head's work.

Outputs, three per stride 8, 16, 32: (1, H/s, W/s, 2) class and objectness logits, (.., 4) box
numbers and (.., 10) keypoint numbers (see `fer_edge/edge_runtime/yunet.py` for the decoding).

The shipped file is built with `--int8`: weights and activations in int8 (float input and outputs),
calibrated on fixed frames made from the shipped sample photo, so the build is reproducible. On
`benchmarks/detection.py` it finds the faces the float32 build finds for ~0.6 of its CPU.
"""
from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np

from fer_edge import atomic
from fer_edge.edge_runtime.yunet import STRIDES
from fer_edge.errors import FerEdgeError

HEADS = ("cls", "obj", "bbox", "kps")  # 1, 1, 4 and 10 channels
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
        cls, obj, box, kps = (separable(x, f"bbox_head__multi_level_{head}__{level}", relu=False) for head in HEADS)
        # Three outputs a stride, not one: int8 gives each tensor one scale, and logits span ~20 units
        # where box sizes need steps of ~0.02 (a concatenation left them 17% steps).
        outputs[level] = [layers.Concatenate(name=f"stride{STRIDES[level]}_score")([cls, obj]), box, kps]
    return tf.keras.Model(image, [t for level in outputs for t in level], name="yunet")


def calibration_frames(count: int = 64, size: int = 320):
    """Gray frames for int8 calibration, the same on every build: the shipped astronaut photo's face
    (with its hair and surroundings) pasted at 20-240 px onto face-free backgrounds, and the whole
    photo, all fed as raw 0-255 values as the runtime feeds frames."""
    import cv2

    from fer_edge.edge_runtime.commands import SAMPLE_IMAGE
    from fer_edge.edge_runtime.scenes import background, paste

    photo = cv2.imread(str(SAMPLE_IMAGE), cv2.IMREAD_GRAYSCALE)
    head = photo[20:240, 112:332]  # a square around the astronaut's head, hair and collar
    rng = np.random.default_rng(0)
    for n in range(count):
        frame = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA) if n % 8 == 0 else background(rng, size, size)
        for _ in range(int(rng.integers(1, 4))):
            side = int(np.exp(rng.uniform(np.log(20), np.log(240))))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
            paste(frame, head, x, y, side, feather=0.2)
        yield [frame[None, :, :, None].astype(np.float32)]


def to_tflite(model, int8: bool = False) -> bytes:
    """The float32 graph, or with `int8` weights and activations in int8 (float input and outputs kept,
    so the runtime feeds and decodes both alike)."""
    from fer_edge.train.tf_setup import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration_frames
    return converter.convert()


@click.command()
@click.argument("weights", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--int8", is_flag=True, help="Quantize weights and activations to int8 (the shipped file).")
def main(weights: Path, out: Path, int8: bool) -> None:
    """Build OUT (.tflite) from libfacedetection's WEIGHTS (src/facedetectcnn-data.cpp)."""
    try:
        atomic.check_writable(out, "OUT")
        arrays = read_weights(weights)
        try:
            model = build_model(arrays)
        except (KeyError, ValueError) as err:  # an array missing, or of another size than the network's
            raise FerEdgeError(f"{weights}: not the YuNet that facedetectcnn-model.cpp wires ({err})") from None
        data = to_tflite(model, int8)
        atomic.write_bytes(out, data)
    except FerEdgeError as err:
        raise click.ClickException(str(err)) from None
    print(f"{out}: {len(data)} bytes")


if __name__ == "__main__":
    main()
