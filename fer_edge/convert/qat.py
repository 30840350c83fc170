"""Quantization-aware training: fake-quantize every layer, then fine-tune a finished float run.

tfmot's default 8-bit scheme covers Conv2D (with its BatchNorm folded), Dense, the activations,
Add and the pooling layers, and lets Reshape and Dropout pass through. It rejects the SE block's
`Multiply`, which therefore gets `SEScaleQuantizeConfig`: left as float it would become MUL/ADD
islands between QUANTIZE/DEQUANTIZE pairs in the converted graph.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import tensorflow_model_optimization as tfmot

from fer_edge import atomic
from fer_edge.errors import FerEdgeError
from fer_edge.spec import preprocess_faces
from fer_edge.train import trainer
from fer_edge.train.data import FerDataset, load_dataset
from fer_edge.train.models import build_model
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


def is_qat_run(run: str | Path) -> bool:
    config = Path(run) / "config.json"
    return config.is_file() and "qat_from" in json.loads(config.read_text())


def load_qat_run(run: str | Path):
    """Rebuild a QAT run's model from its config and load its best (PublicTest) weights."""
    run = Path(run)
    if not (run / trainer.BEST_WEIGHTS).exists():
        raise FerEdgeError(f"{run}: QAT run has no {trainer.BEST_WEIGHTS} yet (no epoch finished)")
    cfg = trainer.TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    tf.keras.mixed_precision.set_global_policy("float32")
    model = quantize_for_training(build_model(cfg.model, cfg.preset, **cfg.overrides))
    model.load_weights(str(run / trainer.BEST_WEIGHTS))
    return model


def train_qat(from_run: str | Path, out_dir: str | Path, epochs: int = QAT_EPOCHS, lr: float = QAT_LR,
              resume: bool = False, dataset: FerDataset | None = None, **overrides) -> Path:
    """Fine-tune the float run `from_run` with fake quantization; return the QAT run folder.

    Data order, augmentation, per-epoch checkpoints, `state.json`, best-epoch selection on
    PublicTest and early stopping are the float trainer's own (`fer_edge.train.trainer`); only
    the model (the float run's best weights, quantized) and the schedule differ. `overrides`
    replace other TrainConfig fields (batch_size, patience, train_limit, val_limit, data, seed;
    None keeps the float run's value). `resume=True` continues `out_dir` after its last finished
    epoch with the configuration saved there; `from_run`, `epochs`, `lr` and `overrides` are then
    ignored. The run folder ends with `best_weights.h5`, a self-contained `qat_model.h5` and
    `final_metrics.json`.
    """
    run = Path(out_dir)
    state_file = run / trainer.STATE
    if resume:
        if not state_file.exists():
            raise FerEdgeError(f"--resume: {run} has no {trainer.STATE}; start the QAT run without --resume")
        config = json.loads((run / "config.json").read_text())
        cfg, from_run, state = trainer.TrainConfig.from_dict(config), config["qat_from"], json.loads(state_file.read_text())
    else:
        if state_file.exists():
            raise FerEdgeError(f"--out: {run} already holds a run; pass --resume to continue it or choose a new folder")
        source = Path(from_run) / "config.json"
        if not source.is_file():
            raise FerEdgeError(f"--from: {from_run} is not a training run folder (no config.json)")
        cfg = replace(trainer.TrainConfig.from_dict(json.loads(source.read_text())), out=str(run), epochs=epochs,
                      lr=lr, warmup_epochs=0.0, precision="float32", logical_cpus=0,
                      **{k: v for k, v in overrides.items() if v is not None})  # None: keep the float run's
        state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0, "history": [], "stopped_early": False}
    if state["stopped_early"] or state["epoch"] >= cfg.epochs:
        print(f"{run}: already finished at epoch {state['epoch']}", file=sys.stderr)
        return run

    ds = dataset or load_dataset(cfg.data)
    tr = ds.subset("Training", cfg.train_limit, cfg.seed) if cfg.train_limit else ds.indices("Training")
    va = ds.subset("PublicTest", cfg.val_limit, cfg.seed) if cfg.val_limit else ds.indices("PublicTest")
    y_train = ds.labels[tr].astype(np.int64)
    x_val, y_val = preprocess_faces(ds.images[va]), ds.labels[va].astype(np.int64)

    # Fake quantization runs in float32: the bfloat16 policy would round the ranges it learns.
    trainer.set_precision("float32")
    model = quantize_for_training(trainer.load_run_model(from_run))
    train_ds, steps = trainer.train_dataset(preprocess_faces(ds.images[tr]), trainer.one_hot(y_train), y_train,
                                            cfg, state["epoch"])
    optimizer = tf.keras.optimizers.Adam(trainer.learning_rate(cfg, steps))
    model.compile(optimizer=optimizer,
                  loss=tf.keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=["accuracy"])
    ckpt = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                                      str(run / "checkpoint"), max_to_keep=1)
    if resume:
        ckpt.checkpoint.restore(ckpt.latest_checkpoint).expect_partial()
        print(f"resuming QAT run {run} after epoch {state['epoch']}", file=sys.stderr)
    else:
        atomic.write_json(run / "config.json", {**asdict(cfg), "qat_from": str(from_run), "quantization": "qat-int8",
                                                "train_images": int(len(tr)), "val_images": int(len(va)),
                                                "data_source": ds.source, "data_notes": ds.notes})
    model.fit(train_ds, epochs=cfg.epochs, initial_epoch=state["epoch"], steps_per_epoch=steps,
              validation_data=(x_val, trainer.one_hot(y_val)), validation_batch_size=256,
              callbacks=[trainer.RunCheckpoint(run, ckpt, state, cfg.patience, "val_accuracy")],
              verbose=1 if sys.stdout.isatty() else 2)
    _finish(run, ds)
    return run


def _finish(run: Path, ds: FerDataset) -> None:
    """Save the selected QAT model whole and score it on both test splits."""
    from fer_edge.train.evaluate import evaluate_split

    model = load_qat_run(run)
    with atomic.atomic_path(run / QAT_MODEL) as tmp:  # the temporary name keeps the .h5 suffix Keras needs
        model.save(str(tmp))
    state = json.loads((run / trainer.STATE).read_text())
    final = {split: evaluate_split(model, ds, split, out_dir=run / f"eval_{split}") for split in ("PublicTest", "PrivateTest")}
    summary = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               **{s: {k: m[k] for k in ("accuracy", "f1_weighted", "f1_macro")} for s, m in final.items()}}
    atomic.write_json(run / "final_metrics.json", summary)
    print(json.dumps(summary, indent=2))
