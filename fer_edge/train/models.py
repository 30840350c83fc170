"""The networks: the deck's manual SE-ResNet and its shallow baseline.

Written like Keras' application models: one function per block, every layer named by its block
prefix, the whole network readable top to bottom in `seresnet`.
"""
from __future__ import annotations

from dataclasses import asdict

from fer_edge.spec import INPUT_SHAPE, NUM_CLASSES
from fer_edge.train.config import PRESETS, SEResNetConfig, resolve_config
from fer_edge.train.tf_setup import tf

layers = tf.keras.layers


def activation(x, kind: str, name: str):
    if kind == "leaky_relu":
        return layers.LeakyReLU(alpha=0.1, name=name)(x)
    if kind == "relu":
        return layers.ReLU(name=name)(x)
    raise ValueError(f"activation must be 'leaky_relu' or 'relu', got {kind!r}")


def conv_bn(x, filters: int, kernel: int, stride: int, prefix: str):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{prefix}_conv")(x)
    # momentum 0.9: moving statistics settle within an epoch, so short runs validate sensibly.
    return layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(x)


def se_block(x, ratio: int, act: str, prefix: str):
    """Squeeze-and-excitation: re-weight channels by a gate computed from their global means."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(name=f"{prefix}_se_squeeze")(x)
    s = layers.Dense(max(channels // ratio, 8), name=f"{prefix}_se_reduce")(s)
    s = activation(s, act, f"{prefix}_se_act")
    s = layers.Dense(channels, activation="sigmoid", name=f"{prefix}_se_expand")(s)
    s = layers.Reshape((1, 1, channels), name=f"{prefix}_se_reshape")(s)
    return layers.Multiply(name=f"{prefix}_se_scale")([x, s])


def residual_block(x, filters: int, stride: int, cfg: SEResNetConfig, prefix: str):
    """Two 3x3 convolutions, optional SE, and a projection shortcut where the shape changes."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, stride, f"{prefix}_proj")
    y = conv_bn(x, filters, 3, stride, f"{prefix}_1")
    y = activation(y, cfg.activation, f"{prefix}_1_act")
    y = conv_bn(y, filters, 3, 1, f"{prefix}_2")
    if cfg.se:
        y = se_block(y, cfg.se_ratio, cfg.activation, prefix)
    y = layers.Add(name=f"{prefix}_add")([shortcut, y])
    return activation(y, cfg.activation, f"{prefix}_out")


def classifier_head(x, dense: int, dropout: float, act: str, flatten: bool = False):
    x = layers.Flatten(name="head_flatten")(x) if flatten else layers.GlobalAveragePooling2D(name="head_pool")(x)
    if dense:
        x = layers.Dense(dense, name="head_dense")(x)
        x = activation(x, act, "head_act")
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(NUM_CLASSES, name="head_logits")(x)
    # float32 so mixed-precision training still computes the loss on full-precision probabilities.
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)


def seresnet(cfg: SEResNetConfig, name: str = "seresnet"):
    inputs = layers.Input(INPUT_SHAPE, name="image")
    x = conv_bn(inputs, cfg.widths[0], 3, cfg.stem_stride, "stem")
    x = activation(x, cfg.activation, "stem_act")
    for stage, (filters, blocks) in enumerate(zip(cfg.widths, cfg.blocks), start=1):
        for block in range(1, blocks + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = residual_block(x, filters, stride, cfg, f"stage{stage}_block{block}")
    return tf.keras.Model(inputs, classifier_head(x, cfg.dense, cfg.dropout, cfg.activation), name=name)


def baseline(name: str = "baseline"):
    """The deck's shallow comparison CNN: three conv blocks, no residuals, no attention.

    It flattens the 6x6 feature map into a dense layer: global pooling there (as the SE-ResNet
    does after four stages) leaves a network this shallow under-fitting at ~45%.
    """
    inputs = layers.Input(INPUT_SHAPE, name="image")
    x = inputs
    for i, filters in enumerate((32, 64, 128), start=1):
        x = conv_bn(x, filters, 3, 1, f"block{i}")
        x = layers.ReLU(name=f"block{i}_act")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return tf.keras.Model(inputs, classifier_head(x, dense=256, dropout=0.4, act="relu", flatten=True), name=name)


def build_model(model: str = "seresnet", preset: str = "edge", **overrides):
    """Build a model by name; `overrides` replace fields of the preset (seresnet only)."""
    if model == "seresnet":
        return seresnet(resolve_config(preset, **overrides), name=f"seresnet_{preset}")
    if model == "baseline":
        return baseline()
    raise ValueError(f"unknown model {model!r}; choose seresnet or baseline")


def model_config(model: str, preset: str, **overrides) -> dict:
    return asdict(resolve_config(preset, **overrides)) if model == "seresnet" else {}


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass (convolutions and dense layers)."""
    macs = 0
    for layer in model.layers:
        layer = getattr(layer, "layer", layer)  # QAT wraps each layer in a QuantizeWrapper
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, cout = layer.output_shape
            macs += kh * kw * layer.input_shape[-1] * cout * h * w
        elif isinstance(layer, layers.Dense):
            macs += layer.input_shape[-1] * layer.units
    return int(macs)
