"""Train, evaluate and export a model: `python -m keras_tutorial.train --model=cnn`.

Flags are read only in `main`; they become one `TrainConfig`, and `run(config)` does the work
and returns the summary that it also writes to `<workdir>/summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

from absl import app, flags, logging
import keras
import tensorflow as tf

from keras_tutorial import data, export, models
from keras_tutorial.errors import UserError

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mean_squared_error")

# Per-model defaults, tuned so that `--model=M` alone reaches the accuracies in README.md.
MODEL_DEFAULTS = {
    "mlp": {"epochs": 20, "learning_rate": 1e-3},
    "cnn": {"epochs": 15, "learning_rate": 1e-3},
    "lstm": {"epochs": 20, "learning_rate": 2e-3},
}
SGD_LEARNING_RATE = 0.05


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; `None` means the model's default."""

    model: str = "mlp"
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int = 128
    learning_rate: float | None = None
    optimizer: str = "adam"
    loss: str = "cross_entropy"
    activation: str = "relu"
    pooling: str = "max"
    seed: int = 0
    validation_size: int = 5000
    max_examples: int = 0
    workdir: str | None = None
    export_dir: str | None = None
    export: bool = True

    def resolved(self) -> TrainConfig:
        """Checks the values and fills every `None` with its default."""
        if self.model not in models.MODELS:
            raise UserError(f"unknown model '{self.model}', expected one of "
                            f"{', '.join(models.MODELS)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be a positive integer, got {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UserError(f"learning_rate must be positive, got {self.learning_rate}")
        for name, choices in (("optimizer", OPTIMIZERS), ("loss", LOSSES)):
            if getattr(self, name) not in choices:
                raise UserError(f"unknown {name} '{getattr(self, name)}', expected one of "
                                f"{', '.join(choices)}")
        defaults = MODEL_DEFAULTS[self.model]
        learning_rate = self.learning_rate or (
            defaults["learning_rate"] if self.optimizer == "adam" else SGD_LEARNING_RATE)
        return dataclasses.replace(
            self,
            epochs=self.epochs or defaults["epochs"],
            learning_rate=learning_rate,
            workdir=self.workdir or os.path.join("runs", f"{self.model}-{self.dataset}"),
            export_dir=self.export_dir or os.path.join("saved_models", self.model))


def mean_squared_error_on_probabilities(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The tutorial's MSE loss: squared distance between softmax output and one-hot label."""
    one_hot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), data.NUM_CLASSES)
    return tf.reduce_mean(tf.square(tf.nn.softmax(logits) - one_hot), axis=-1)


def make_loss(name: str) -> keras.losses.Loss | callable:
    if name == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return mean_squared_error_on_probabilities


def make_optimizer(name: str, learning_rate: float, decay_steps: int) -> keras.optimizers.Optimizer:
    """Adam or SGD with momentum, the learning rate following a cosine decay to zero."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    if name == "adam":
        return keras.optimizers.Adam(schedule)
    return keras.optimizers.SGD(schedule, momentum=0.9)


def build_compiled_model(config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """The model of a resolved `config`, compiled as training uses it (call in a strategy scope)."""
    model = models.build(config.model, activation=config.activation, pooling=config.pooling)
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate,
                                 config.epochs * steps_per_epoch),
        loss=make_loss(config.loss),
        metrics=["accuracy"])
    return model


class EpochTimer(keras.callbacks.Callback):
    """Times the training part of each epoch (validation excluded) without per-batch hooks."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = self._end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._end is None:
            self._end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append((self._end or time.perf_counter()) - self._start)
        self._start = None


def _write_json(path: str, content: dict) -> None:
    """Writes JSON atomically, so a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def run(config: TrainConfig) -> dict:
    """Trains, evaluates and exports one model; returns the summary written to summary.json."""
    started = time.perf_counter()
    config = config.resolved()
    keras.utils.set_random_seed(config.seed)
    arrays = data.load_arrays(config.dataset, config.data_dir, config.max_examples, config.seed)
    pipelines = data.make_pipelines(arrays, config.batch_size, config.seed, config.validation_size)
    logging.info("Data: %s; %d train, %d validation, %d test examples", arrays.source,
                 pipelines.num_train, pipelines.num_validation, pipelines.num_test)

    strategy = tf.distribute.get_strategy()
    steps_per_epoch = math.ceil(pipelines.num_train / config.batch_size)
    with strategy.scope():
        model = build_compiled_model(config, steps_per_epoch)
    logging.info("Model %s: %d parameters; %d epochs of %d steps, batch %d, %s at %g",
                 config.model, model.count_params(), config.epochs, steps_per_epoch,
                 config.batch_size, config.optimizer, config.learning_rate)

    os.makedirs(config.workdir, exist_ok=True)
    timer = EpochTimer()
    history = model.fit(
        pipelines.train, epochs=config.epochs, validation_data=pipelines.validation,
        shuffle=False,  # The pipeline already reshuffles every epoch.
        callbacks=[timer, keras.callbacks.TensorBoard(os.path.join(config.workdir, "tensorboard"))])
    test_loss, test_accuracy = model.evaluate(pipelines.test, verbose=0)
    logging.info("Test accuracy %.4f, loss %.4f", test_accuracy, test_loss)

    steady = timer.seconds[1:]
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "data_source": arrays.source,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "optimizer": config.optimizer,
        "loss": config.loss,
        "seed": config.seed,
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "validation_accuracy": (float(history.history["val_accuracy"][-1])
                                if pipelines.validation is not None else None),
        "params": int(model.count_params()),
        "train_examples": pipelines.num_train,
        "test_examples": pipelines.num_test,
        "first_epoch_examples_per_sec": pipelines.num_train / timer.seconds[0],
        "train_examples_per_sec": (pipelines.num_train * len(steady) / sum(steady)
                                   if steady else None),
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "workdir": config.workdir,
        "export_path": None,
    }
    if config.export:
        summary["export_path"] = export.export_model(
            model, config.export_dir, metadata={**summary, "config": dataclasses.asdict(config)})
        logging.info("Exported %s", summary["export_path"])
    summary["wall_seconds"] = time.perf_counter() - started
    _write_json(os.path.join(config.workdir, "summary.json"), summary)
    logging.info("Wrote %s", os.path.join(config.workdir, "summary.json"))
    return summary


FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "mlp", models.MODELS, "Architecture to train.")
flags.DEFINE_enum("dataset", "mnist", data.DATASETS,
                  "Dataset: a TFDS name, or 'synthetic' for learnable random data.")
flags.DEFINE_string("data_dir", None,
                    "A directory with the four IDX files or mnist.npz (read directly), or else "
                    "TFDS's data directory.")
flags.DEFINE_integer("epochs", None, "Epochs to train (default: the model's own).", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Examples per training step.", lower_bound=1)
flags.DEFINE_float("learning_rate", None,
                   "Initial learning rate, decayed to zero on a cosine (default: the model's own "
                   f"for adam, {SGD_LEARNING_RATE} for sgd).")
flags.DEFINE_enum("optimizer", "adam", OPTIMIZERS, "Optimizer (sgd has momentum 0.9).")
flags.DEFINE_enum("loss", "cross_entropy", LOSSES, "Loss on the softmax output.")
flags.DEFINE_enum("activation", "relu", models.ACTIVATIONS, "Hidden activation (mlp and cnn).")
flags.DEFINE_enum("pooling", "max", models.POOLINGS, "Pooling (cnn).")
flags.DEFINE_integer("seed", 0, "Seed for initial weights, dropout and shuffling.")
flags.DEFINE_integer("validation_size", 5000,
                     "Training examples held out for validation (0: none).", lower_bound=0)
flags.DEFINE_integer("max_examples", 0,
                     "Use at most this many train and test examples, for quick runs (0: all).",
                     lower_bound=0)
flags.DEFINE_string("workdir", None, "TensorBoard logs and summary.json (default: "
                    "runs/<model>-<dataset>).")
flags.DEFINE_string("export_dir", None, "SavedModel versions 1, 2, ... go here (default: "
                    "saved_models/<model>).")
flags.DEFINE_bool("export", True, "Export a SavedModel after training.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = TrainConfig(**{field.name: FLAGS[field.name].value
                            for field in dataclasses.fields(TrainConfig)})
    try:
        summary = run(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({key: summary[key] for key in (
        "model", "dataset", "test_accuracy", "train_examples_per_sec", "wall_seconds",
        "export_path")}))


if __name__ == "__main__":
    app.run(main)
