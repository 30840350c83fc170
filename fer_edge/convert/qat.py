"""Quantization-aware training: fake-quantize every layer, then fine-tune a finished float run.

tfmot's default 8-bit scheme covers Conv2D (with its BatchNorm folded), Dense, the activations,
Add and the pooling layers, and lets Reshape and Dropout pass through. It rejects the SE block's
`Multiply`, which therefore gets `SEScaleQuantizeConfig`: left as float it would become MUL/ADD
islands between QUANTIZE/DEQUANTIZE pairs in the converted graph.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import tensorflow_model_optimization as tfmot

from fer_edge import atomic
from fer_edge.errors import FerEdgeError
from fer_edge.train import trainer
from fer_edge.train.data import FerDataset
from fer_edge.train.tf_setup import tf

qk = tfmot.quantization.keras

QAT_MODEL = "qat_model.h5"
# The weights start converged and only need to absorb 8-bit rounding: a few epochs at a tenth of
# the float recipe's learning rate, without warm-up.
QAT_EPOCHS = 5
QAT_LR = 1e-4


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


def save_qat_model(model, run: Path) -> Path:
    """Save the selected QAT model whole beside its run, as the self-contained `qat_model.h5`."""
    with atomic.atomic_path(run / QAT_MODEL) as tmp:  # the temporary name keeps the .h5 suffix Keras needs
        model.save(str(tmp))
    return run / QAT_MODEL


def train_qat(from_run: str | Path | None, out_dir: str | Path, epochs: int = QAT_EPOCHS, lr: float = QAT_LR,
              resume: bool = False, dataset: FerDataset | None = None, **overrides) -> Path:
    """Fine-tune the float run `from_run` with fake quantization; return the QAT run folder.

    This is the float trainer (`fer_edge.train.trainer.train`) with the float run's best weights,
    quantized, as the starting model: same data order, augmentation, per-epoch checkpoints,
    PublicTest selection, early stopping and `--resume`. Only the schedule differs: `lr` without
    warm-up, in float32 (a bfloat16 policy would round the ranges QAT learns). `overrides`
    replace other TrainConfig fields (data, batch_size, patience, train_limit, val_limit, seed);
    None keeps the float run's value. The run ends with `qat_model.h5` beside its best weights.
    """
    run = Path(out_dir)
    if resume:
        return trainer.train(trainer.TrainConfig(out=str(run)), resume=True, dataset=dataset)
    source = Path(from_run) / "config.json"
    if not source.is_file():
        raise FerEdgeError(f"--from: {from_run} is not a training run folder (no config.json)")
    float_cfg = json.loads(source.read_text())
    if float_cfg.get("qat_from"):
        raise FerEdgeError(f"--from: {from_run} is already a QAT run; give the float run it came from")
    cfg = replace(trainer.TrainConfig.from_dict(float_cfg), out=str(run), epochs=epochs, lr=lr, warmup_epochs=0.0,
                  precision="float32", logical_cpus=0, qat_from=str(from_run),
                  **{k: v for k, v in overrides.items() if v is not None})
    return trainer.train(cfg, dataset=dataset)
