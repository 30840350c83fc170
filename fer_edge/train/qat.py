"""Quantization-aware training: fake-quantize every layer of a float model for fine-tuning.

tfmot's default 8-bit scheme covers Conv2D (with its BatchNorm folded), Dense, the activations,
Add and the pooling layers, and lets Reshape and Dropout pass through. It rejects the SE block's
`Multiply`, which therefore gets `SEScaleQuantizeConfig`: left as float it would become MUL/ADD
islands between QUANTIZE/DEQUANTIZE pairs in the converted graph. The fine-tuning itself is the
float trainer's loop (`TrainConfig.qat_from`).
"""
from __future__ import annotations

from pathlib import Path

import tensorflow_model_optimization as tfmot

from fer_edge import atomic
from fer_edge.train.tf_setup import tf

qk = tfmot.quantization.keras


class SEScaleQuantizeConfig(qk.QuantizeConfig):
    """Quantize only the output of the SE `Multiply`.

    It has no weights, and both its inputs (the block's convolution and the sigmoid gate) are
    already quantized by their own layers, so one 8-bit per-tensor range on the product is what
    the int8 MUL kernel needs. The range is learned as a moving average of batch min/max, like
    tfmot's default activation quantizers.
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


CUSTOM_OBJECTS = {"SEScaleQuantizeConfig": SEScaleQuantizeConfig}


def quantize_scope():
    """The scope in which QAT models are built and loaded (it knows the custom config)."""
    return qk.quantize_scope(CUSTOM_OBJECTS)


def quantize_for_training(float_model):
    """Return a QAT copy of `float_model` (same weights) with every layer fake-quantized."""

    def annotate_se_scale(layer):
        if isinstance(layer, tf.keras.layers.Multiply):
            return qk.quantize_annotate_layer(layer, SEScaleQuantizeConfig())
        return layer

    with quantize_scope():
        # The clone only marks the Multiply layers (it reuses every layer object, hence every
        # weight); quantize_annotate_model then gives all other layers the default scheme.
        marked = tf.keras.models.clone_model(float_model, clone_function=annotate_se_scale)
        return qk.quantize_apply(qk.quantize_annotate_model(marked))


def is_qat_model(model) -> bool:
    return any(isinstance(layer, qk.QuantizeWrapper) for layer in model.layers)


def load_qat_model(path: str | Path):
    """Load a QAT model saved whole with `model.save("....h5")`.

    tf-keras cannot restore tfmot's quantizer variables from the `.keras` format (it finds 3 of
    the QuantizeLayer's 5 variables), so QAT models are saved as HDF5.
    """
    with quantize_scope():
        return tf.keras.models.load_model(str(path), compile=False)


def save_qat_model(model, path: Path) -> Path:
    """Save a QAT model whole, as a self-contained `.h5` (see `load_qat_model`)."""
    with atomic.atomic_path(path) as tmp:  # the temporary name keeps the .h5 suffix Keras needs
        model.save(str(tmp))
    return path
