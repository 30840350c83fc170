"""Every training setting and its default, in one place: the CLI passes only what the user typed.

No TensorFlow here, so the CLI checks a whole command line in a fraction of a second.

`TrainConfig.validate` checks the whole class of numeric options before any data is loaded or
any file is written, naming the CLI flag of a bad value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from fer_edge.errors import FerEdgeError


@dataclass
class AugmentConfig:
    flip: bool = True
    rotation: float = 10.0
    """Maximum rotation in degrees."""
    zoom: float = 0.1
    shift: float = 0.1
    """Maximum translation as a fraction of the image side."""
    erasing: float = 0.0
    """Probability of erasing one random rectangle of an image (random erasing)."""
    mixup: float = 0.0
    """Beta(alpha, alpha) of mixup between images of a batch; 0 turns it off."""


@dataclass(frozen=True)
class SEResNetConfig:
    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    stem_stride: int = 1
    activation: str = "leaky_relu"
    se: bool = True
    se_ratio: int = 8
    dense: int = 256
    dropout: float = 0.4


PRESETS: dict[str, SEResNetConfig] = {
    # The deck's sizes: 11.5 M parameters, 1.25 G MACs; too slow for a Pi-class CPU.
    "paper": SEResNetConfig(),
    # A quarter of the widths: ~0.3 G MACs, under 1 ms int8 on one x86 core.
    "edge": SEResNetConfig(widths=(32, 64, 128, 256)),
    # ReLU because the Edge TPU compiler does not map LEAKY_RELU and cuts the graph there.
    "edgetpu": SEResNetConfig(widths=(32, 64, 128, 256), activation="relu"),
}


class ModelConfigError(ValueError):
    """An override the network cannot be built with; `key` names the SEResNetConfig field."""

    def __init__(self, key: str, value, what: str):
        shown = list(value) if isinstance(value, tuple) else value  # as config.json spells it
        super().__init__(f"overrides.{key}: {shown!r} is not allowed; {what}")
        self.key, self.value, self.what = key, value, what


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is an int to Python


def check_model_config(cfg: SEResNetConfig) -> SEResNetConfig:
    """Raise ModelConfigError naming the first field (from a config.json, of any type) that cannot be built."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ModelConfigError(key, getattr(cfg, key), what)

    def counts(values) -> bool:
        return isinstance(values, tuple) and len(values) > 0 and all(_is_int(v) and v >= 1 for v in values)

    need(counts(cfg.widths), "widths", "widths must be positive integers, one per stage")
    need(counts(cfg.blocks), "blocks", "block counts must be positive integers")
    need(len(cfg.blocks) == len(cfg.widths), "blocks", f"give one block count per stage ({len(cfg.widths)} widths)")
    need(_is_int(cfg.stem_stride) and cfg.stem_stride in (1, 2), "stem_stride", "give 1 or 2")
    need(cfg.activation in ("leaky_relu", "relu"), "activation", "choose leaky_relu or relu")
    need(isinstance(cfg.se, bool), "se", "give true or false")
    need(_is_int(cfg.se_ratio) and cfg.se_ratio >= 1, "se_ratio", "give a positive integer")
    need(_is_int(cfg.dense) and cfg.dense >= 0, "dense", "give 0 (no dense layer) or a number of units")
    need(isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1, "dropout", "give a rate in [0, 1)")
    return cfg


def resolve_config(preset: str, **overrides) -> SEResNetConfig:
    """The preset with `overrides` replacing its fields; ValueError naming an unknown or invalid one."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    known = [f.name for f in fields(SEResNetConfig)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"overrides.{unknown[0]}: unknown key; expected some of {', '.join(known)}")
    return check_model_config(replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}))

ARCHS = ("seresnet", "baseline")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# QAT starts from converged weights and only absorbs 8-bit rounding: a few epochs at a tenth of the
# float recipe's learning rate, without warm-up, in float32 (bfloat16 would round the learned ranges).
# A distilled float run's QAT keeps its teachers' targets (see train.distill).
QAT_DEFAULTS = {"epochs": 5, "lr": 1e-4, "warmup_epochs": 0.0, "precision": "float32", "logical_cpus": 0}
# The architecture fields `train` sets by flag (the others come only from a run's config.json).
MODEL_FLAGS = {"widths": "--widths", "blocks": "--blocks", "stem_stride": "--stem-stride"}
# What a QAT run may change of its float run: the schedule and the data draw, never the network.
QAT_OVERRIDABLE = ("data", "epochs", "lr", "batch_size", "patience", "train_limit", "val_limit", "seed")
# Every epoch's image order is drawn when training starts (so a resumed run draws the same ones):
# 10^8 epochs of 200 images ran out of memory after a minute and a half.
MAX_EPOCHS = 1000
# Each logical CPU holds a replica of the model in this one process; two test the distributed path,
# and 16 of even the smallest network did not finish an epoch in five minutes here.
MAX_LOGICAL_CPUS = 8


@dataclass
class TrainConfig:
    out: str = "runs/train"
    data: str | None = None
    model: str = "seresnet"
    """The architecture: seresnet or baseline (`--arch` on the command line)."""
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
    """Quantization-aware fine-tuning of this finished float run's best weights (see train.qat)."""
    init: str | None = None
    """Start from this model's weights instead of a fresh network: a run folder, a `.keras`/`.h5`
    model or a `.tflite` file of the same network (see train.warm_start)."""
    teachers: list = field(default_factory=list)
    """Runs, models or `ferplus` whose mean probabilities become soft targets (see train.distill)."""
    distill: float = 0.5
    """Weight of the teachers' probabilities in each training target (the label keeps the rest)."""
    extensions: list = field(default_factory=list)
    """Epoch-count changes made by `--resume --epochs N`: [{"after_epoch": e, "from": old, "to": N}].
    The cosine schedule is re-stretched to the new length from that step on."""

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        overrides = d.get("overrides", {})
        if not isinstance(overrides, dict):
            raise ValueError(f"overrides: expected an object of architecture fields, got {overrides!r}")
        # JSON has no tuples; anything but a list is left for check_model_config to name.
        d["overrides"] = {k: tuple(v) if isinstance(v, list) and k in ("widths", "blocks") else v
                          for k, v in overrides.items()}
        return cls(**d)

    def for_qat(self, from_run: str, out: str, **overrides) -> "TrainConfig":
        """The QAT run of this float run: same network and augmentation, the QAT schedule."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, out=out, qat_from=str(from_run), init=None, extensions=[], **{**QAT_DEFAULTS, **given})

    def validate(self) -> "TrainConfig":
        """Raise FerEdgeError naming the flag of the first out-of-range setting."""
        def need(ok: bool, flag: str, value, what: str) -> None:
            if not ok:
                raise FerEdgeError(f"{flag}: {value!r} is not allowed; {what}")

        need(self.model in ARCHS, "--arch", self.model, f"choose from {', '.join(ARCHS)}")
        need(self.precision in PRECISIONS, "--precision", self.precision, f"choose from {', '.join(PRECISIONS)}")
        need(1 <= self.epochs <= MAX_EPOCHS, "--epochs", self.epochs, f"give 1 to {MAX_EPOCHS}")
        need(self.batch_size >= 1, "--batch-size", self.batch_size, "give at least 1")
        need(0 < self.lr < math.inf, "--lr", self.lr, "the learning rate must be positive and finite")
        # A longer warm-up never reaches the peak rate, and a huge one overflows the schedule's step count.
        need(0 <= self.warmup_epochs <= self.epochs, "--warmup-epochs", self.warmup_epochs,
             f"give 0 up to the {self.epochs} epochs of the run")
        need(0 <= self.label_smoothing < 1, "--label-smoothing", self.label_smoothing, "give a value in [0, 1)")
        need(self.patience >= 1, "--patience", self.patience, "give at least 1 epoch")
        need(0 <= self.logical_cpus <= MAX_LOGICAL_CPUS, "--logical-cpus", self.logical_cpus,
             f"give 0 (off) up to {MAX_LOGICAL_CPUS}")
        need(0 < self.distill <= 1, "--distill", self.distill, "give a weight in (0, 1]")
        # numpy's and TensorFlow's seeds are unsigned 32-bit; the trainer adds the epoch to it.
        need(0 <= self.seed < 2**31, "--seed", self.seed, f"give an integer from 0 to {2**31 - 1}")
        for flag, limit in (("--train-limit", self.train_limit), ("--val-limit", self.val_limit)):
            need(limit is None or limit >= 1, flag, limit, "give at least 1 image")
        a = self.augment
        need(0 <= a.rotation <= 180, "--rotation", a.rotation, "give degrees in [0, 180]")
        need(0 <= a.zoom < 1, "--zoom", a.zoom, "give a fraction in [0, 1)")
        need(0 <= a.shift < 1, "--shift", a.shift, "give a fraction in [0, 1)")
        need(0 <= a.erasing <= 1, "--erasing", a.erasing, "give a probability in [0, 1]")
        need(0 <= a.mixup < math.inf, "--mixup", a.mixup, "give 0 (off) or a positive Beta alpha")
        if self.model == "seresnet":
            need(self.preset in PRESETS, "--preset", self.preset, f"choose from {', '.join(PRESETS)}")
            try:
                resolve_config(self.preset, **self.overrides)
            except ModelConfigError as exc:  # named by its flag where it has one
                value = ",".join(map(str, exc.value)) if isinstance(exc.value, tuple) else exc.value
                need(False, MODEL_FLAGS.get(exc.key, f"overrides.{exc.key}"), value, exc.what)
        return self
