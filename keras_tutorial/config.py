"""Every setting of a training run, its choices and its default, each defined once, checked in
one place.

`TrainConfig()` holds the defaults that `python -m keras_tutorial.train --help` shows; `None`
means "the model's own", filled in by `resolved()` from `MODEL_DEFAULTS`. This module imports
no TensorFlow, so that the commands check their flags before TensorFlow loads; the modules
that build models, data and strategies take their choices from here.
"""

from __future__ import annotations

import dataclasses
import math
import os

from keras_tutorial.errors import UserError

MODELS = ("mlp", "cnn", "lstm")
ACTIVATIONS = ("relu", "tanh", "sigmoid")
POOLINGS = ("max", "average")
TFDS_DATASETS = ("mnist", "fashion_mnist", "kmnist")
DATASETS = TFDS_DATASETS + ("synthetic",)
AUGMENTATIONS = ("none", "flip")
OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mean_squared_error")
SGD_MOMENTUM = 0.9
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "true", "false")
FAST_PATH_CHOICES = ("auto", "true", "false")

# Per-model defaults, tuned so that `--model=M` alone reaches the accuracies in docs/accuracy.md.
# Learning rates are for Adam at a global batch of REFERENCE_BATCH_SIZE (`scaled_learning_rate`).
MODEL_DEFAULTS = {
    "mlp": {"epochs": 20, "learning_rate": 1e-3, "steps_per_execution": 16, "augment": "none"},
    "cnn": {"epochs": 15, "learning_rate": 2e-3, "steps_per_execution": 4, "augment": "flip"},
    "lstm": {"epochs": 20, "learning_rate": 2e-3, "steps_per_execution": 4, "augment": "none"},
}
SGD_LEARNING_RATE = 0.05
REFERENCE_BATCH_SIZE = 128
AUGMENT_CHOICES = ("auto",) + AUGMENTATIONS
# Datasets whose labels survive a left-right mirror: a mirrored shoe is a shoe, a mirrored 7 is
# not a 7.
MIRROR_SAFE_DATASETS = ("fashion_mnist",)
# Settings that must match for a workdir's backup to be resumed.
RUN_IDENTITY = ("model", "dataset", "epochs", "batch_size", "learning_rate", "optimizer", "loss",
                "activation", "pooling", "batch_norm", "augment", "seed", "validation_size",
                "max_examples")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; `None` means the model's default."""

    model: str = "mlp"
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int = REFERENCE_BATCH_SIZE
    learning_rate: float | None = None
    optimizer: str = "adam"
    loss: str = "cross_entropy"
    activation: str = "relu"
    pooling: str = "max"
    batch_norm: bool = True
    augment: str = "auto"
    seed: int = 0
    validation_size: int = 5000
    max_examples: int = 0
    workdir: str | None = None
    export_dir: str | None = None
    export: bool = True
    strategy: str = "auto"
    cpu_replicas: int = 1
    intra_op_threads: int | None = None
    precision: str = "auto"
    jit_compile: str = "auto"
    fast_paths: str = "auto"
    steps_per_execution: int | None = None
    backup_every_steps: int = 0
    deterministic: bool = False
    verbose: bool = True

    def resolved(self) -> TrainConfig:
        """Checks the values and fills every `None` with its default."""
        self._check()
        defaults = MODEL_DEFAULTS[self.model]
        return dataclasses.replace(
            self,
            augment=(default_augmentation(self.model, self.dataset) if self.augment == "auto"
                     else self.augment),
            epochs=self.epochs or defaults["epochs"],
            learning_rate=self.learning_rate or scaled_learning_rate(
                defaults["learning_rate"] if self.optimizer == "adam" else SGD_LEARNING_RATE,
                self.optimizer, self.batch_size),
            steps_per_execution=self.steps_per_execution or defaults["steps_per_execution"],
            workdir=self.workdir or os.path.join("runs", f"{self.model}-{self.dataset}"),
            export_dir=self.export_dir or os.path.join("saved_models", self.model))

    def identity(self) -> dict:
        """The settings a backup belongs to: a workdir resumes only the same run."""
        return {name: getattr(self, name) for name in RUN_IDENTITY}

    def _check(self) -> None:
        for name, choices in (("model", MODELS), ("dataset", DATASETS),
                              ("optimizer", OPTIMIZERS), ("loss", LOSSES),
                              ("activation", ACTIVATIONS), ("pooling", POOLINGS),
                              ("augment", AUGMENT_CHOICES), ("strategy", STRATEGIES),
                              ("precision", PRECISIONS), ("jit_compile", JIT_CHOICES),
                              ("fast_paths", FAST_PATH_CHOICES)):
            check_choice(name, getattr(self, name), choices)
        for name in ("epochs", "batch_size", "steps_per_execution", "cpu_replicas"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be a positive integer, got {value}")
        for name in ("intra_op_threads", "backup_every_steps", "validation_size",
                     "max_examples"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{name} must be 0 or more, got {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UserError(f"learning_rate must be positive, got {self.learning_rate}")


def check_choice(setting: str, value: str, choices: tuple[str, ...],
                 error: type[UserError] = UserError) -> None:
    """Raises `error`, one line naming the setting, its value and the choices, unless `value`
    is one of `choices`: the check of `TrainConfig` and of the public builders alike."""
    if value not in choices:
        raise error(f"unknown {setting} '{value}', expected one of {', '.join(choices)}")


def default_augmentation(model: str, dataset: str) -> str:
    """The model's own augmentation where a mirrored example keeps its label, else none."""
    return MODEL_DEFAULTS[model]["augment"] if dataset in MIRROR_SAFE_DATASETS else "none"


def scaled_learning_rate(base: float, optimizer: str, batch_size: int) -> float:
    """Scales a default rate tuned for a global batch of 128 to `batch_size`.

    SGD follows the linear rule (Goyal et al., 2017); Adam, which normalises its steps, the
    square-root rule. An explicit --learning_rate is used as given.
    """
    ratio = batch_size / REFERENCE_BATCH_SIZE
    return base * (ratio if optimizer == "sgd" else math.sqrt(ratio))
