"""The deck's training recipe, resumable after the process dies.

Adam, cross-entropy with label smoothing, cosine decay with warm-up, early stopping and the best
weights kept on the validation split (PublicTest). Every epoch writes a checkpoint (weights,
optimizer state, schedule position) and `state.json` (epoch, early-stopping state); `--resume`
continues from there, with the same per-epoch data order an uninterrupted run would have used.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from fer_edge import atomic
from fer_edge.errors import FerEdgeError
from fer_edge.spec import CLASS_NAMES, NUM_CLASSES, preprocess_faces
from fer_edge.train.augment import AugmentConfig, augment_batch_fn
from fer_edge.train.data import FerDataset, load_dataset
from fer_edge.train.models import build_model, count_macs, model_config
from fer_edge.train.tf_setup import tf

BEST_WEIGHTS = "best_weights.h5"
STATE = "state.json"


@dataclass
class TrainConfig:
    out: str = "runs/train"
    data: str | None = None
    model: str = "seresnet"
    preset: str = "edge"
    overrides: dict = field(default_factory=dict)
    """SEResNetConfig fields replacing the preset's (e.g. widths, blocks, stem_stride)."""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    patience: int = 10
    seed: int = 0
    precision: str = "auto"
    """auto (bfloat16 on CPUs with AVX512-BF16, float16 on GPUs), float32, bfloat16 or float16."""
    class_weight: bool = False
    oversample: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train_limit: int | None = None
    """Train on a stratified subset of this many images (quick runs and tests)."""
    val_limit: int | None = None
    logical_cpus: int = 0
    """Split the CPU into this many logical devices and mirror across them (tests the distributed path)."""
    qat_from: str | None = None
    """Quantization-aware fine-tuning of this finished float run's best weights (see convert.qat)."""

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        return cls(**d)


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
    orders = [epoch_order(labels, e, cfg.seed, cfg.oversample, cfg.batch_size) for e in range(first_epoch, cfg.epochs)]
    steps = len(orders[0]) // cfg.batch_size
    x_t, y_t = tf.constant(x), tf.constant(y_onehot)
    ds = tf.data.Dataset.from_tensor_slices(np.concatenate(orders).astype(np.int32)).batch(cfg.batch_size)
    ds = ds.map(lambda i: (tf.gather(x_t, i), tf.gather(y_t, i)), num_parallel_calls=tf.data.AUTOTUNE)
    tf.keras.utils.set_random_seed(cfg.seed + first_epoch)
    ds = ds.map(augment_batch_fn(cfg.augment, cfg.seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def learning_rate(cfg: TrainConfig, steps_per_epoch: int):
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr * 0.01 if warmup else cfg.lr,
        decay_steps=max(cfg.epochs * steps_per_epoch - warmup, 1),
        alpha=0.01, warmup_target=cfg.lr if warmup else None, warmup_steps=warmup)


class RunCheckpoint(tf.keras.callbacks.Callback):
    """Per-epoch checkpoint, best-weights selection, early stopping, history CSV and curves."""

    def __init__(self, run: Path, ckpt: tf.train.CheckpointManager, state: dict, patience: int, monitor: str):
        super().__init__()
        self.run, self.ckpt, self.state, self.patience, self.monitor = run, ckpt, state, patience, monitor

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        lr = self.model.optimizer.learning_rate
        logs["lr"] = float(tf.keras.backend.get_value(lr(self.model.optimizer.iterations) if callable(lr) else lr))
        st = self.state
        st["history"].append({"epoch": epoch + 1, **logs})
        if logs[self.monitor] > st["best"]:
            st.update(best=logs[self.monitor], best_epoch=epoch + 1, wait=0)
            with atomic.atomic_path(self.run / BEST_WEIGHTS) as tmp:
                self.model.save_weights(str(tmp))
        else:
            st["wait"] += 1
        st["epoch"] = epoch + 1
        st["stopped_early"] = st["wait"] >= self.patience
        self.ckpt.save(checkpoint_number=epoch + 1)
        atomic.write_json(self.run / STATE, st)
        write_history(self.run, st["history"])
        if st["stopped_early"]:
            print(f"early stopping: no {self.monitor} gain for {self.patience} epochs", file=sys.stderr)
            self.model.stop_training = True


def write_history(run: Path, history: list[dict]) -> None:
    keys = list(history[0])
    with atomic.atomic_path(run / "history.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    from fer_edge.train.plots import plot_curves

    plot_curves(history, run / "curves.png")


def train(cfg: TrainConfig, resume: bool = False, dataset: FerDataset | None = None) -> Path:
    """Train (or resume) a run; returns the run folder holding best weights and final metrics."""
    run = Path(cfg.out)
    state_file = run / STATE
    if resume:
        if not state_file.exists():
            raise FerEdgeError(f"--resume: {run} has no {STATE}; start the run without --resume")
        cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        state = json.loads(state_file.read_text())
    else:
        if state_file.exists():
            raise FerEdgeError(f"--out: {run} already holds a run; pass --resume to continue it or choose a new folder")
        state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0, "history": [], "stopped_early": False}
    if state["stopped_early"] or state["epoch"] >= cfg.epochs:
        print(f"{run}: already finished at epoch {state['epoch']}", file=sys.stderr)
        return run

    ds = dataset or load_dataset(cfg.data)
    tr = ds.subset("Training", cfg.train_limit, cfg.seed) if cfg.train_limit else ds.indices("Training")
    va = ds.subset("PublicTest", cfg.val_limit, cfg.seed) if cfg.val_limit else ds.indices("PublicTest")
    x_train, y_train = preprocess_faces(ds.images[tr]), ds.labels[tr].astype(np.int64)
    x_val, y_val = preprocess_faces(ds.images[va]), ds.labels[va].astype(np.int64)

    strategy = make_strategy(cfg.logical_cpus)  # first: logical devices must precede any TF context use
    precision = resolve_precision(cfg.precision)
    set_precision(precision)
    train_ds, steps = train_dataset(x_train, one_hot(y_train), y_train, cfg, state["epoch"])
    with strategy.scope():
        model = initial_model(cfg)
        optimizer = tf.keras.optimizers.Adam(learning_rate(cfg, steps))
        model.compile(optimizer=optimizer,
                      loss=tf.keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                      metrics=["accuracy"])
    ckpt = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                                      str(run / "checkpoint"), max_to_keep=1)
    if resume:
        ckpt.checkpoint.restore(ckpt.latest_checkpoint).expect_partial()
        print(f"resuming {run} after epoch {state['epoch']} (best val accuracy {state['best']:.4f})", file=sys.stderr)
    else:
        atomic.write_json(run / "config.json", {
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
    callback = RunCheckpoint(run, ckpt, state, cfg.patience, "val_accuracy")
    model.fit(train_ds, epochs=cfg.epochs, initial_epoch=state["epoch"], steps_per_epoch=steps,
              validation_data=(x_val, one_hot(y_val)), validation_batch_size=256,
              class_weight=class_weight, callbacks=[callback], verbose=1 if sys.stdout.isatty() else 2)
    finish(run, ds)
    return run


def initial_model(cfg: TrainConfig):
    """A fresh network, or for QAT the float run's best weights wrapped in fake quantization."""
    if cfg.qat_from:
        from fer_edge.convert.qat import quantize_for_training

        return quantize_for_training(load_run_model(cfg.qat_from))
    return build_model(cfg.model, cfg.preset, **cfg.overrides)


def load_run_model(run: str | Path):
    """Rebuild a run's model (float, or quantization-aware for QAT runs) and load its best weights."""
    run = Path(run)
    cfg_file = run / "config.json"
    if not cfg_file.exists() or not (run / BEST_WEIGHTS).exists():
        raise FerEdgeError(f"{run}: not a finished training run (needs config.json and {BEST_WEIGHTS})")
    tf.keras.mixed_precision.set_global_policy("float32")
    # A damaged config.json fails in json (ValueError, also for bytes that are not UTF-8) or, with
    # wrong keys, types or values, in TrainConfig and build_model (TypeError, KeyError, AttributeError).
    try:
        cfg = TrainConfig.from_dict(json.loads(cfg_file.read_text(encoding="utf-8")))
        model = build_model(cfg.model, cfg.preset, **cfg.overrides)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FerEdgeError(f"{cfg_file}: not a valid run configuration ({_one_line(exc)})") from None
    if cfg.qat_from:
        from fer_edge.convert.qat import quantize_for_training

        model = quantize_for_training(model)
    try:  # h5py raises OSError on a truncated or foreign file, Keras ValueError on mismatched layers
        model.load_weights(str(run / BEST_WEIGHTS))
    except (OSError, ValueError) as exc:
        raise FerEdgeError(f"{run / BEST_WEIGHTS}: cannot load the run's weights ({_one_line(exc)})") from None
    return model


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def finish(run: Path, ds: FerDataset) -> dict:
    """Evaluate the best weights on PublicTest and PrivateTest into final_metrics.json."""
    from fer_edge.train.evaluate import evaluate_split

    model = load_run_model(run)
    if json.loads((run / "config.json").read_text()).get("qat_from"):
        from fer_edge.convert.qat import save_qat_model

        save_qat_model(model, run)
    final = {split: evaluate_split(model, ds, split, out_dir=run / f"eval_{split}")
             for split in ("PublicTest", "PrivateTest")}
    state = json.loads((run / STATE).read_text())
    summary = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               **{s: {k: m[k] for k in ("accuracy", "f1_weighted", "f1_macro")} for s, m in final.items()}}
    atomic.write_json(run / "final_metrics.json", summary)
    print(json.dumps(summary, indent=2))
    return summary
