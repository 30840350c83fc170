"""The deck's training recipe, resumable after the process dies.

Adam, cross-entropy with label smoothing, cosine decay with warm-up, early stopping and the best
weights kept on the validation split (PublicTest). Every epoch writes a checkpoint (weights,
optimizer state, schedule position) and `state.json` (epoch, early-stopping state); `--resume`
continues from there, with the same per-epoch data order an uninterrupted run would have used.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.errors import FerEdgeError
from fer_edge.spec import CLASS_NAMES, NUM_CLASSES, preprocess_faces
from fer_edge.train import run as runs
from fer_edge.train.augment import augment_batch_fn
from fer_edge.train.config import TrainConfig
from fer_edge.train.data import FerDataset, load_dataset
from fer_edge.train.distill import check_teachers, mix, teacher_targets
from fer_edge.train.models import build_model, count_macs, model_config
from fer_edge.train.tf_setup import tf
from fer_edge.train.warm_start import check_init, load_initial_weights


def resolve_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if tf.config.list_physical_devices("GPU"):
        return "float16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "bfloat16" if "avx512_bf16" in flags or "amx_bf16" in flags else "float32"


def set_precision(precision: str) -> None:
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}.get(precision)
    if policy is None:
        raise FerEdgeError(f"--precision: unknown value {precision!r}; choose auto, float32, bfloat16 or float16")
    tf.keras.mixed_precision.set_global_policy(policy)


def make_strategy(logical_cpus: int = 0):
    """MultiWorkerMirrored from TF_CONFIG, Mirrored across local GPUs (or logical CPUs), else default."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


def epoch_order(labels: np.ndarray, epoch: int, seed: int, oversample: bool, batch_size: int) -> np.ndarray:
    """The image order of one epoch, a pure function of (seed, epoch) so a resumed run matches."""
    rng = np.random.default_rng([seed, epoch])
    n = len(labels)
    if oversample:
        # Draw classes uniformly so disgust (436 images) is seen as often as happy (7,215).
        counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
        p = 1.0 / counts[labels]
        order = rng.choice(n, n, replace=True, p=p / p.sum())
    else:
        order = rng.permutation(n)
    return order[: n - n % batch_size]


def train_dataset(x, y_onehot, labels, cfg: TrainConfig, first_epoch: int):
    """Batches for epochs `first_epoch`.. of the run, and each epoch's order fingerprint."""
    orders = [epoch_order(labels, e, cfg.seed, cfg.oversample, cfg.batch_size) for e in range(first_epoch, cfg.epochs)]
    digests = {e: order_digest(o) for e, o in zip(range(first_epoch, cfg.epochs), orders)}
    steps = len(orders[0]) // cfg.batch_size
    x_t, y_t = tf.constant(x), tf.constant(y_onehot)
    ds = tf.data.Dataset.from_tensor_slices(np.concatenate(orders).astype(np.int32)).batch(cfg.batch_size)
    ds = ds.map(lambda i: (tf.gather(x_t, i), tf.gather(y_t, i)), num_parallel_calls=tf.data.AUTOTUNE)
    tf.keras.utils.set_random_seed(cfg.seed + first_epoch)
    ds = ds.map(augment_batch_fn(cfg.augment, cfg.seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), steps, digests


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def learning_rate(cfg: TrainConfig, steps_per_epoch: int):
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr * 0.01 if warmup else cfg.lr,
        decay_steps=max(cfg.epochs * steps_per_epoch - warmup, 1),
        alpha=0.01, warmup_target=cfg.lr if warmup else None, warmup_steps=warmup)


def order_digest(order: np.ndarray) -> str:
    """A short fingerprint of an epoch's image order, kept in the history to prove resumes match."""
    return hashlib.sha256(np.ascontiguousarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]


class RunCheckpoint(tf.keras.callbacks.Callback):
    """Per-epoch checkpoint, best-weights selection, early stopping, history CSV and curves.

    The epoch's checkpoint is saved before `state.json` names it, and two are kept, so a kill at
    any point leaves a state whose checkpoint exists.
    """

    def __init__(self, run: Path, ckpt: tf.train.CheckpointManager, state: dict, patience: int, monitor: str,
                 digests: dict[int, str]):
        super().__init__()
        self.run, self.ckpt, self.state, self.patience, self.monitor = run, ckpt, state, patience, monitor
        self.digests = digests

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        lr = self.model.optimizer.learning_rate
        logs["lr"] = float(tf.keras.backend.get_value(lr(self.model.optimizer.iterations) if callable(lr) else lr))
        st = self.state
        st["history"].append({"epoch": epoch + 1, **logs, "order": self.digests[epoch]})
        if logs[self.monitor] > st["best"]:
            st.update(best=logs[self.monitor], best_epoch=epoch + 1, wait=0)
            with atomic.atomic_path(self.run / runs.BEST_WEIGHTS) as tmp:
                self.model.save_weights(str(tmp))
        else:
            st["wait"] += 1
        st["epoch"] = epoch + 1
        st["stopped_early"] = st["wait"] >= self.patience
        st["checkpoint"] = Path(self.ckpt.save(checkpoint_number=epoch + 1)).name
        runs.write_state(self.run, st)
        write_history(self.run, st["history"])
        if st["stopped_early"]:
            print(f"early stopping: no {self.monitor} gain for {self.patience} epochs", file=sys.stderr)
            self.model.stop_training = True


def write_history(run: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic.atomic_path(run / runs.HISTORY) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    from fer_edge.train.plots import plot_curves

    plot_curves(history, run / runs.CURVES)


def train(cfg: TrainConfig, dataset: FerDataset | None = None) -> Path:
    """Start a new run in `cfg.out`; returns the run folder holding best weights and final metrics."""
    cfg.validate()
    if not cfg.qat_from:  # a QAT run takes its float run's saved targets, not the teachers themselves
        check_teachers(cfg.teachers)
    check_init(cfg.init)
    run = Path(cfg.out)
    if runs.has_state(run):
        raise FerEdgeError(f"--out: {run} already holds a run; pass --resume to continue it or choose a new folder")
    atomic.check_writable(run, "--out", folder=True)
    return _fit(cfg, runs.new_state(), dataset, resumed=False)


def resume(out: str | Path, epochs: int | None = None, data: str | None = None,
           dataset: FerDataset | None = None) -> Path:
    """Continue the run in `out` from the checkpoint its state.json names.

    `epochs` extends (or shortens, to no less than the epochs done) the schedule; the change is
    recorded in config.json's `extensions`, and the cosine decay is re-stretched to the new length
    from the current step. `data` points at the same data in a new place.
    """
    run = Path(out)
    if not runs.has_state(run):
        raise FerEdgeError(f"--resume: {run} has no {runs.STATE} (no finished epoch); start the run without --resume")
    cfg, state = replace(runs.load_config(run), out=str(run)), runs.read_state(run)  # the folder may have moved
    runs.resumable_checkpoint(run, state)
    changed = {}
    if data is not None and data != cfg.data:
        changed["data"] = data
    if epochs is not None and epochs != cfg.epochs:
        if epochs < max(state["epoch"], 1):
            raise FerEdgeError(f"--epochs: {epochs} is below the {state['epoch']} epochs {run} has already run")
        changed["epochs"] = epochs
        changed["extensions"] = [*cfg.extensions, {"after_epoch": state["epoch"], "from": cfg.epochs, "to": epochs}]
        state.update(stopped_early=False, wait=0)  # an extension asks for the epochs even after an early stop
        print(f"{run}: schedule changed from {cfg.epochs} to {epochs} epochs after epoch {state['epoch']}; "
              "recorded in config.json", file=sys.stderr)
    if changed:
        cfg = replace(cfg, **changed).validate()
        runs.write_config(run, {**runs.config_dict(run), **{k: v for k, v in changed.items()}})
        runs.write_state(run, state)
    if state["stopped_early"] or state["epoch"] >= cfg.epochs:
        print(f"{run}: already finished at epoch {state['epoch']} (extend it with --resume --epochs N)", file=sys.stderr)
        return run
    return _fit(cfg, state, dataset, resumed=True)


def _fit(cfg: TrainConfig, state: dict, dataset: FerDataset | None, resumed: bool) -> Path:
    run = Path(cfg.out)
    ds = dataset or load_dataset(cfg.data)
    tr = ds.subset("Training", cfg.train_limit, cfg.seed) if cfg.train_limit else ds.indices("Training")
    va = ds.subset("PublicTest", cfg.val_limit, cfg.seed) if cfg.val_limit else ds.indices("PublicTest")
    if cfg.batch_size > len(tr):
        raise FerEdgeError(f"--batch-size: {cfg.batch_size} is larger than the {len(tr)} training images of {ds.source}")
    if len(va) == 0:
        raise FerEdgeError(f"--data: {ds.source} has no PublicTest (validation) images")
    x_train, y_train = preprocess_faces(ds.images[tr]), ds.labels[tr].astype(np.int64)
    x_val, y_val = preprocess_faces(ds.images[va]), ds.labels[va].astype(np.int64)

    strategy = make_strategy(cfg.logical_cpus)  # first: logical devices must precede any TF context use
    targets = one_hot(y_train)
    if cfg.teachers:  # before the precision policy: teachers predict in float32
        targets = mix(targets, teacher_targets(run, cfg.teachers, ds, tr, cfg.qat_from), cfg.distill)
    precision = resolve_precision(cfg.precision)
    set_precision(precision)
    train_ds, steps, digests = train_dataset(x_train, targets, y_train, cfg, state["epoch"])
    with strategy.scope():
        model = initial_model(cfg)
        optimizer = tf.keras.optimizers.Adam(learning_rate(cfg, steps))
        model.compile(optimizer=optimizer,
                      loss=tf.keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                      metrics=["accuracy"])
    ckpt = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                                      str(runs.checkpoint_dir(run)), max_to_keep=runs.CHECKPOINTS_KEPT)
    if resumed:
        ckpt.checkpoint.restore(str(runs.resumable_checkpoint(run, state))).expect_partial()
        print(f"resuming {run} after epoch {state['epoch']} (best val accuracy {state['best']:.4f})", file=sys.stderr)
    else:
        if cfg.init:
            load_initial_weights(model, cfg.init, ds.images[tr])
        runs.write_config(run, {
            **asdict(cfg), "precision_resolved": precision, "class_names": list(CLASS_NAMES),
            "model_config": model_config(cfg.model, cfg.preset, **cfg.overrides),
            "params": int(model.count_params()), "macs": count_macs(model),
            "quantization": "qat-int8" if cfg.qat_from else "float32",
            "train_images": int(len(tr)), "val_images": int(len(va)), "data_source": ds.source, "data_notes": ds.notes})

    class_weight = None
    if cfg.class_weight:
        from sklearn.utils.class_weight import compute_class_weight

        weights = compute_class_weight("balanced", classes=np.arange(NUM_CLASSES), y=y_train)
        class_weight = dict(enumerate(weights.tolist()))
    callback = RunCheckpoint(run, ckpt, state, cfg.patience, "val_accuracy", digests)
    model.fit(train_ds, epochs=cfg.epochs, initial_epoch=state["epoch"], steps_per_epoch=steps,
              validation_data=(x_val, one_hot(y_val)), validation_batch_size=256,
              class_weight=class_weight, callbacks=[callback], verbose=1 if sys.stdout.isatty() else 2)
    finish(run, ds)
    return run


def initial_model(cfg: TrainConfig):
    """A fresh network, or for QAT the float run's best weights wrapped in fake quantization."""
    if cfg.qat_from:
        from fer_edge.train.qat import quantize_for_training

        return quantize_for_training(runs.load_run_model(cfg.qat_from))
    return build_model(cfg.model, cfg.preset, **cfg.overrides)


def start_qat(from_run: str | Path, out: str | Path, dataset: FerDataset | None = None, **overrides) -> Path:
    """Fine-tune the finished float run `from_run` with fake quantization in a new run folder `out`.

    This is the float trainer with the float run's best weights, quantized, as the starting model:
    same data order, augmentation, per-epoch checkpoints, PublicTest selection, early stopping and
    `--resume`. `overrides` (TrainConfig fields in config.QAT_OVERRIDABLE) replace the QAT
    defaults or the float run's values; the run ends with `qat_model.h5` beside its best weights.
    """
    float_cfg = runs.load_config(from_run)
    if float_cfg.qat_from:
        raise FerEdgeError(f"--from: {from_run} is already a QAT run; give the float run it came from")
    if not (Path(from_run) / runs.BEST_WEIGHTS).exists():
        raise FerEdgeError(f"--from: {from_run} has no {runs.BEST_WEIGHTS} yet (the float run has not finished an epoch)")
    return train(float_cfg.for_qat(str(from_run), str(out), **overrides), dataset=dataset)


def finish(run: Path, ds: FerDataset) -> dict:
    """Evaluate the best weights on PublicTest and PrivateTest into final_metrics.json."""
    from fer_edge.train.evaluate import evaluate_split

    model = runs.load_run_model(run)
    if runs.is_qat(run):
        from fer_edge.train.qat import save_qat_model

        save_qat_model(model, run / runs.QAT_MODEL)
    final = {split: evaluate_split(model, ds, split, out_dir=run / f"eval_{split}")
             for split in ("PublicTest", "PrivateTest")}
    state = runs.read_state(run)
    cfg = runs.config_dict(run)
    summary = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "epochs_planned": cfg["epochs"],
               "extensions": cfg.get("extensions", []),
               **{s: {k: m[k] for k in ("accuracy", "f1_weighted", "f1_macro")} for s, m in final.items()}}
    atomic.write_json(run / runs.FINAL_METRICS, summary)
    print(json.dumps(summary, indent=2))
    return summary
