"""Train, evaluate and export a model: `python -m keras_tutorial.train --model=cnn`.

Flags are read only in `main`; they become one `TrainConfig`, and `run(config)` does the work
(data, model and strategy, the training loop, evaluation, export) and returns the summary that
it also writes to `<workdir>/summary.json`. Running the same command again resumes an
interrupted run from its last backup, and does not retrain a finished one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

from absl import app, flags, logging
import keras
import tensorflow as tf

from keras_tutorial import data, distribute, export, fused, loop, models
from keras_tutorial.errors import UserError

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mean_squared_error")

# Per-model defaults, tuned so that `--model=M` alone reaches the accuracies in README.md.
# Learning rates are for a global batch of REFERENCE_BATCH_SIZE (see `scaled_learning_rate`).
MODEL_DEFAULTS = {
    "mlp": {"epochs": 20, "learning_rate": 1e-3, "steps_per_execution": 16, "augment": "none"},
    "cnn": {"epochs": 15, "learning_rate": 2e-3, "steps_per_execution": 4, "augment": "flip"},
    "lstm": {"epochs": 20, "learning_rate": 2e-3, "steps_per_execution": 4, "augment": "none"},
}
SGD_LEARNING_RATE = 0.05
AUGMENT_CHOICES = ("auto",) + data.AUGMENTATIONS
MIRROR_SAFE_DATASETS = ("fashion_mnist",)
REFERENCE_BATCH_SIZE = 128
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
    steps_per_execution: int | None = None
    backup_every_steps: int = 0
    deterministic: bool = False
    verbose: bool = True

    def resolved(self) -> TrainConfig:
        """Checks the values and fills every `None` with its default."""
        if self.model not in models.MODELS:
            raise UserError(f"unknown model '{self.model}', expected one of "
                            f"{', '.join(models.MODELS)}")
        for name in ("epochs", "batch_size", "steps_per_execution", "cpu_replicas"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be a positive integer, got {value}")
        if self.intra_op_threads is not None and self.intra_op_threads < 0:
            raise UserError(f"intra_op_threads must be 0 or more, got {self.intra_op_threads}")
        if self.backup_every_steps < 0:
            raise UserError(f"backup_every_steps must be 0 or more, got {self.backup_every_steps}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UserError(f"learning_rate must be positive, got {self.learning_rate}")
        for name, choices in (("optimizer", OPTIMIZERS), ("loss", LOSSES),
                              ("augment", AUGMENT_CHOICES)):
            if getattr(self, name) not in choices:
                raise UserError(f"unknown {name} '{getattr(self, name)}', expected one of "
                                f"{', '.join(choices)}")
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


def default_augmentation(model: str, dataset: str) -> str:
    """The model's own augmentation where a mirrored example keeps its label (garments, not
    digits or characters), else none."""
    return MODEL_DEFAULTS[model]["augment"] if dataset in MIRROR_SAFE_DATASETS else "none"


def scaled_learning_rate(base: float, optimizer: str, batch_size: int) -> float:
    """Scales a default rate tuned for a global batch of 128 to `batch_size`.

    SGD follows the linear rule (Goyal et al., 2017); Adam, which normalises its steps, the
    square-root rule. An explicit --learning_rate is used as given.
    """
    ratio = batch_size / REFERENCE_BATCH_SIZE
    return base * (ratio if optimizer == "sgd" else math.sqrt(ratio))


# Registered so that a compiled model can be cloned or saved with its loss (export clones RNNs).
@keras.saving.register_keras_serializable(package="keras_tutorial")
def mean_squared_error_on_probabilities(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The tutorial's MSE loss: squared distance between softmax output and one-hot label."""
    one_hot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), data.NUM_CLASSES)
    return tf.reduce_mean(tf.square(tf.nn.softmax(logits) - one_hot), axis=-1)


@keras.saving.register_keras_serializable(package="keras_tutorial")
def sparse_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def make_loss(name: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The per-example loss (labels, logits) -> [batch]; the loop averages it."""
    return sparse_cross_entropy if name == "cross_entropy" else mean_squared_error_on_probabilities


def make_optimizer(name: str, learning_rate: float, decay_steps: int,
                   loss_scaling: bool = False) -> keras.optimizers.Optimizer:
    """Adam or SGD with momentum, the learning rate following a cosine decay to zero; both
    update with fused kernels (fused.py)."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    optimizer = (fused.FusedAdam(schedule) if name == "adam"
                 else fused.FusedSGD(schedule, momentum=0.9))
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaling else optimizer


def build_model(config: TrainConfig) -> keras.Model:
    """The model of a resolved `config`; one trained on mirrored images averages its
    predictions over each image and its mirror."""
    return models.build(config.model, activation=config.activation, pooling=config.pooling,
                        batch_norm=config.batch_norm, average_mirrors=config.augment == "flip")


def build_compiled_model(config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """The model of a resolved `config`, compiled for Keras `fit` as training would run it.

    For notebooks and benchmarks that use `fit`; `run` itself uses the resumable loop. Built
    in the scope of a strategy with several replicas, it takes one step per call: Keras 3.15's
    `fit` with more (its multi-step loop) stops there with "You must feed a value for
    placeholder tensor".
    """
    steps_per_execution = config.steps_per_execution
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1 and steps_per_execution > 1:
        logging.info("%d replicas: fit takes 1 step per call, not %d", replicas,
                     steps_per_execution)
        steps_per_execution = 1
    model = build_model(config)
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate,
                                 config.epochs * steps_per_epoch),
        loss=make_loss(config.loss),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution)
    return model


def _apply_cpu_replicas(replicas: int) -> None:
    """Splits the CPU unless it already has that many logical devices (one when never split)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or [None]) != replicas:
        distribute.split_cpu(replicas)


def apply_intra_op_threads(requested: int | None, model: str) -> int:
    """Sets threads per op as asked, or as measured fastest for the model; returns those in
    effect. An automatic choice yields to a TensorFlow that has already started (a notebook, a
    test)."""
    threads = distribute.choose_intra_op_threads(requested, model, distribute.has_accelerator())
    if not distribute.set_intra_op_threads(threads, required=requested is not None):
        logging.info("TensorFlow already started: threads per op stay %d (%d is faster for "
                     "the %s)", tf.config.threading.get_intra_op_parallelism_threads(), threads,
                     model)
    return tf.config.threading.get_intra_op_parallelism_threads()


def _check_same_run(workdir: str, config: TrainConfig) -> None:
    """Refuses to resume a backup made with different settings; records them for a new run."""
    path = os.path.join(workdir, "run.json")
    identity = {name: getattr(config, name) for name in RUN_IDENTITY}
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        for name in RUN_IDENTITY:
            if recorded.get(name) != identity[name]:
                raise UserError(
                    f"workdir {workdir} holds a run with {name}={recorded.get(name)!r}, not "
                    f"{identity[name]!r}: rerun with the same flags to resume it, or pass "
                    "another --workdir")
    else:
        loop.write_json(path, identity)


def _load_history(workdir: str) -> dict[int, dict]:
    path = os.path.join(workdir, "history.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {record["epoch"]: record for record in json.load(f)}


def run(config: TrainConfig, cluster: distribute.Cluster = distribute.Cluster()) -> dict:
    """Trains (or resumes), evaluates and exports one model; returns the summary.

    `cluster` is this process's place in a multi-worker job (see `distribute.read_cluster`).
    """
    started = time.perf_counter()
    config = config.resolved()
    intra_op_threads = apply_intra_op_threads(config.intra_op_threads, config.model)
    _apply_cpu_replicas(config.cpu_replicas)
    strategy = distribute.make_strategy(config.strategy, cluster)
    kind = distribute.device_kind(strategy)
    precision = distribute.choose_precision(config.precision, kind,
                                            distribute.gpu_compute_capability())
    jit_compile = distribute.choose_jit(config.jit_compile, config.model, kind)
    distribute.set_precision(precision)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    chief = cluster.is_chief

    arrays = data.load_arrays(config.dataset, config.data_dir, config.max_examples, config.seed)
    pipelines = data.make_pipelines(arrays, config.batch_size, config.seed, config.validation_size,
                                    config.augment)
    logging.info("Data: %s; %d train, %d validation, %d test examples", arrays.source,
                 pipelines.num_train, pipelines.num_validation, pipelines.num_test)
    os.makedirs(config.workdir, exist_ok=True)
    if chief:
        _check_same_run(config.workdir, config)

    loop_config = loop.LoopConfig(
        epochs=config.epochs, global_batch_size=config.batch_size, seed=config.seed,
        backup_dir=os.path.join(config.workdir, "backup"),
        steps_per_execution=config.steps_per_execution,
        backup_every_steps=config.backup_every_steps, jit_compile=jit_compile,
        num_workers=cluster.num_workers, task_index=cluster.task_index,
        verbose=config.verbose and chief)
    decay_steps = config.epochs * loop.steps_per_epoch(
        pipelines.num_train, config.batch_size, cluster.num_workers)
    with strategy.scope():
        model = build_model(config)
        optimizer = make_optimizer(config.optimizer, config.learning_rate, max(decay_steps, 1),
                                   loss_scaling=precision == "mixed_float16")
    trainer = loop.Trainer(strategy, model, optimizer, make_loss(config.loss), pipelines,
                           loop_config)
    logging.info("Model %s: %d parameters; strategy %s with %d replicas on %d worker(s), "
                 "global batch %d (%d per replica); precision %s, jit %s; %d epochs of %d steps, "
                 "%s at %g", config.model, model.count_params(), type(strategy).__name__,
                 strategy.num_replicas_in_sync, cluster.num_workers, config.batch_size,
                 trainer.per_replica_batch_size, precision, jit_compile, config.epochs,
                 trainer.steps_per_epoch, config.optimizer, config.learning_rate)

    logging.info("Worker %d of %d reads examples with digest %s in epoch 1", cluster.task_index,
                 cluster.num_workers, trainer.examples_digest(0))
    summary_path = os.path.join(config.workdir, "summary.json")
    resumed_at = trainer.restore()
    resumed_from = None
    if resumed_at >= trainer.total_steps and os.path.exists(summary_path):
        logging.info("Run in %s already finished; not retraining (use another --workdir "
                     "for a new run)", config.workdir)
        with open(summary_path) as f:
            return json.load(f)
    if resumed_at:
        epoch, step = divmod(resumed_at, trainer.steps_per_epoch)
        resumed_from = {"epoch": epoch + 1, "step": step, "global_step": resumed_at}
        logging.info("resumed at epoch %d, step %d", epoch + 1, step)

    history = _load_history(config.workdir)
    writer = (tf.summary.create_file_writer(os.path.join(config.workdir, "tensorboard"))
              if chief else None)

    def on_epoch_end(record: loop.EpochRecord) -> None:
        history[record.epoch] = dataclasses.asdict(record)
        logging.info("Epoch %d: loss %.4f, accuracy %.4f, validation accuracy %s, "
                     "%.0f examples/s", record.epoch, record.loss, record.accuracy,
                     "n/a" if record.val_accuracy is None else f"{record.val_accuracy:.4f}",
                     record.steps * config.batch_size / record.seconds)
        if chief:
            loop.write_json(os.path.join(config.workdir, "history.json"),
                            [history[epoch] for epoch in sorted(history)])
            with writer.as_default(step=record.epoch):
                for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
                    if getattr(record, name) is not None:
                        tf.summary.scalar(name, getattr(record, name))

    records = trainer.train(on_epoch_end)
    test_loss, test_accuracy = trainer.evaluate(pipelines.test)
    logging.info("Test accuracy %.4f, loss %.4f", test_accuracy, test_loss)

    examples = [record.steps * config.batch_size for record in records]
    seconds = [record.seconds for record in records]
    last = history[max(history)] if history else {}
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "data_source": arrays.source,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "optimizer": config.optimizer,
        "loss": config.loss,
        "augment": config.augment,
        "seed": config.seed,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "validation_accuracy": last.get("val_accuracy"),
        "params": int(model.count_params()),
        "train_examples": pipelines.num_train,
        "test_examples": pipelines.num_test,
        "first_epoch_examples_per_sec": examples[0] / seconds[0] if records else None,
        "train_examples_per_sec": (sum(examples[1:]) / sum(seconds[1:])
                                   if len(records) > 1 else None),
        "trace_seconds": trainer.trace_seconds,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "workers": cluster.num_workers,
        "per_replica_batch_size": trainer.per_replica_batch_size,
        "precision": precision,
        "jit_compile": jit_compile,
        "steps_per_execution": config.steps_per_execution,
        "intra_op_threads": intra_op_threads,
        "deterministic": config.deterministic,
        "resumed_from": resumed_from,
        "weights_digest": trainer.weights_digest(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "workdir": config.workdir,
        "export_path": None,
    }
    logging.info("Final weights digest %s (worker %d)", summary["weights_digest"],
                 cluster.task_index)
    if chief and config.export:
        summary["export_path"] = export.export_model(
            model, config.export_dir, metadata={**summary, "config": dataclasses.asdict(config)},
            class_names=data.CLASS_NAMES[config.dataset])
        logging.info("Exported %s", summary["export_path"])
    summary["wall_seconds"] = time.perf_counter() - started
    if not chief:
        return summary
    loop.write_json(summary_path, summary)
    logging.info("Wrote %s", summary_path)
    return summary


FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "mlp", models.MODELS, "Architecture to train.")
flags.DEFINE_enum("dataset", "mnist", data.DATASETS,
                  "Dataset: a TFDS name, or 'synthetic' for learnable random data.")
flags.DEFINE_string("data_dir", None,
                    "A directory with the four IDX files or mnist.npz (read directly), or else "
                    "TFDS's data directory.")
flags.DEFINE_integer("epochs", None, "Epochs to train (default: the model's own).", lower_bound=1)
flags.DEFINE_integer("batch_size", REFERENCE_BATCH_SIZE,
                     "GLOBAL batch: the examples of one step summed over all replicas and "
                     "workers; each replica gets batch_size / replicas.", lower_bound=1)
flags.DEFINE_float("learning_rate", None,
                   "Initial learning rate, decayed to zero on a cosine. Default: the model's own "
                   f"(sgd: {SGD_LEARNING_RATE}) for a batch of {REFERENCE_BATCH_SIZE}, scaled "
                   "to --batch_size by the square root (adam) or linearly (sgd).")
flags.DEFINE_enum("optimizer", "adam", OPTIMIZERS, "Optimizer (sgd has momentum 0.9).")
flags.DEFINE_enum("loss", "cross_entropy", LOSSES, "Loss on the softmax output.")
flags.DEFINE_enum("activation", "relu", models.ACTIVATIONS, "Hidden activation (mlp and cnn).")
flags.DEFINE_enum("pooling", "max", models.POOLINGS, "Pooling (cnn).")
flags.DEFINE_bool("batch_norm", True, "Batch normalisation after each convolution (cnn).")
flags.DEFINE_enum("augment", "auto", AUGMENT_CHOICES, "Training-time augmentation. flip: mirror "
                  "a random half of each batch, and predict with the mean of the logits of each "
                  "image and its mirror; auto: flip for the cnn on fashion_mnist, whose "
                  "garments keep their class when mirrored, else none.")
flags.DEFINE_integer("seed", 0, "Seed for initial weights, dropout and shuffling.")
flags.DEFINE_integer("validation_size", 5000,
                     "Training examples held out for validation (0: none).", lower_bound=0)
flags.DEFINE_integer("max_examples", 0,
                     "Use at most this many train and test examples, for quick runs (0: all).",
                     lower_bound=0)
flags.DEFINE_string("workdir", None, "Backups, TensorBoard logs and summary.json (default: "
                    "runs/<model>-<dataset>). Rerunning with the same workdir resumes.")
flags.DEFINE_string("export_dir", None, "SavedModel versions 1, 2, ... go here (default: "
                    "saved_models/<model>).")
flags.DEFINE_bool("export", True, "Export a SavedModel after training.")
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES,
                  "tf.distribute strategy. auto: multi_worker if TF_CONFIG lists several "
                  "workers, tpu if one is found, mirrored on several GPUs, one_device on one, "
                  "else default (CPU).")
flags.DEFINE_integer("cpu_replicas", 1, "Split the CPU into this many logical devices, so that "
                     "--strategy=mirrored has replicas without GPUs.", lower_bound=1)
flags.DEFINE_integer("intra_op_threads", None, "Threads one op may use (0: TensorFlow's "
                     "default, every core). Default: 1 for the mlp on machines without GPU or "
                     "TPU, whose small matmuls gain nothing from splitting (1.3x faster on 2 "
                     "cores), else 0.", lower_bound=0)
flags.DEFINE_enum("precision", "auto", distribute.PRECISIONS,
                  "auto: mixed_bfloat16 on TPUs and GPUs of compute capability >= 8.0, "
                  "mixed_float16 (with loss scaling) on older GPUs, float32 on CPUs.")
flags.DEFINE_enum("jit_compile", "auto", distribute.JIT_CHOICES,
                  "XLA-compile the training step; auto: where measured faster for the model "
                  "and device.")
flags.DEFINE_integer("steps_per_execution", None, "Training steps per call into TensorFlow "
                     "(default: the model's own).", lower_bound=1)
flags.DEFINE_integer("backup_every_steps", 0, "Also back up training state every this many "
                     "steps (0: only at the end of each epoch).", lower_bound=0)
flags.DEFINE_bool("verbose", True, "Show a progress bar during each epoch.")
flags.DEFINE_bool("deterministic", False, "Deterministic ops: a run killed and resumed ends "
                  "with weights bit-identical to an uninterrupted one (slower).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    tf.get_logger().setLevel("WARNING")  # TensorFlow's own INFO lines bury the run's progress.
    config = TrainConfig(**{field.name: FLAGS[field.name].value
                            for field in dataclasses.fields(TrainConfig) if field.name in FLAGS})
    try:
        summary = run(config, distribute.read_cluster(os.environ.get("TF_CONFIG")))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({key: summary.get(key) for key in (
        "model", "dataset", "test_accuracy", "train_examples_per_sec", "wall_seconds",
        "export_path")}))


if __name__ == "__main__":
    app.run(main)
