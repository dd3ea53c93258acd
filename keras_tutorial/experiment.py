"""One training run as named steps: runtime -> data -> model -> loop -> evaluation -> export.

`run(config)` is what `python -m keras_tutorial.train` does and what the notebooks call: the
same data path, model, optimizer and resumable loop for both. Running it again with the same
workdir resumes an interrupted run from its last backup, and does not retrain a finished one.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from absl import logging
import keras
import tensorflow as tf

from keras_tutorial import data, distribute, export, fastpath, files, loop, models, objectives
from keras_tutorial.config import TrainConfig
from keras_tutorial.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How this process trains: the final choices for this machine and installation, and what
    they set up."""

    choices: distribute.Choices
    strategy: tf.distribute.Strategy
    cluster: distribute.Cluster
    intra_op_threads: int


@dataclasses.dataclass(frozen=True)
class Result:
    """A finished run: its summary (as in summary.json), the trained model, every epoch."""

    summary: dict
    model: keras.Model
    history: list[dict]


def set_up_runtime(config: TrainConfig, cluster: distribute.Cluster) -> Runtime:
    """Chooses for this machine, then sets threads, CPU replicas, strategy and precision, keeps
    the fast paths that work with this installation, and seeds.

    Threads and CPU replicas can only be set before TensorFlow starts, so this comes first.
    """
    devices = distribute.detect_devices(cluster.num_workers)
    choices = distribute.choose(devices, config.model, config.strategy, config.precision,
                                config.jit_compile, config.intra_op_threads, config.fast_paths,
                                config.deterministic, config.pooling, config.batch_norm)
    threads = distribute.set_intra_op_threads(choices.intra_op_threads,
                                              required=config.intra_op_threads is not None)
    distribute.split_cpu(config.cpu_replicas)
    strategy = distribute.make_strategy(choices.strategy, devices)
    distribute.set_precision(choices.precision)
    choices = fastpath.usable(choices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    return Runtime(choices, strategy, cluster, threads)


def load_data(config: TrainConfig) -> tuple[data.Arrays, data.Pipelines]:
    """The dataset in memory and its train, validation and test pipelines."""
    arrays = data.load_arrays(config.dataset, config.data_dir, config.max_examples, config.seed)
    pipelines = data.make_pipelines(arrays, config.batch_size, config.seed,
                                    config.validation_size, config.augment)
    logging.info("Data: %s; %d train, %d validation, %d test examples", arrays.source,
                 pipelines.num_train, pipelines.num_validation, pipelines.num_test)
    return arrays, pipelines


def build_model(config: TrainConfig,
                choices: distribute.Choices = distribute.Choices()) -> keras.Model:
    """The model of a resolved `config` with the layers `choices` hold (stock Keras by
    default); one trained on mirrored images averages its predictions over each image and its
    mirror."""
    return models.build(config.model, activation=config.activation, pooling=config.pooling,
                        batch_norm=config.batch_norm, average_mirrors=config.augment == "flip",
                        fused_batch_norm=choices.fused_batch_norm,
                        lstm_slices=choices.lstm_slices, lstm_fused_chain=choices.lstm_fused_chain,
                        lstm_cudnn=choices.lstm_cudnn)


def build_trainer(config: TrainConfig, runtime: Runtime, pipelines: data.Pipelines,
                  backup_dir: str) -> loop.Trainer:
    """The model and optimizer, built in the strategy's scope, in the resumable loop: the one
    place a trainer is made, for the command, the notebooks and the benchmarks alike."""
    cluster, choices = runtime.cluster, runtime.choices
    decay_steps = config.epochs * loop.steps_per_epoch(pipelines.num_train, config.batch_size,
                                                       cluster.num_workers)
    with runtime.strategy.scope():
        model = build_model(config, choices)
        optimizer = objectives.make_optimizer(
            config.optimizer, config.learning_rate, decay_steps,
            loss_scaling=choices.loss_scaling, fused=choices.fused_optimizer)
    loop_config = loop.LoopConfig(
        epochs=config.epochs, global_batch_size=config.batch_size, seed=config.seed,
        backup_dir=backup_dir, steps_per_execution=config.steps_per_execution,
        backup_every_steps=config.backup_every_steps, choices=choices,
        num_workers=cluster.num_workers, task_index=cluster.task_index,
        verbose=config.verbose and cluster.is_chief, progress_bar=redraws_in_place())
    trainer = loop.Trainer(runtime.strategy, model, optimizer, objectives.make_loss(config.loss),
                           pipelines, loop_config)
    logging.info("Model %s: %d parameters; strategy %s with %d replicas on %d worker(s), global "
                 "batch %d (%d per replica); precision %s, jit %s, fast paths %s; %d epochs of "
                 "%d steps, %s at %g", config.model, model.count_params(), choices.strategy,
                 runtime.strategy.num_replicas_in_sync, cluster.num_workers, config.batch_size,
                 trainer.per_replica_batch_size, choices.precision, choices.jit_compile,
                 ", ".join(choices.fast_paths) or "none", config.epochs,
                 trainer.steps_per_epoch, config.optimizer, config.learning_rate)
    logging.info("Worker %d of %d reads examples with digest %s in epoch 1", cluster.task_index,
                 cluster.num_workers, trainer.examples_digest(0))
    return trainer


def redraws_in_place() -> bool:
    """Whether standard output shows a progress bar redrawn in place (a terminal or a
    notebook); a file or a pipe would keep every redraw, escape codes and all."""
    return sys.stdout.isatty() or "ipykernel" in sys.modules


def resumed_from(trainer: loop.Trainer) -> dict | None:
    """Where a restored run resumes (logged), or None for a fresh start."""
    if not trainer.step:
        return None
    epoch, step = divmod(trainer.step, trainer.steps_per_epoch)
    logging.info("resumed at %s", trainer.position())
    return {"epoch": epoch + 1, "step": step, "global_step": trainer.step}


def log_epoch(record: loop.EpochRecord, batch_size: int) -> None:
    logging.info("Epoch %d: loss %.4f, accuracy %.4f, validation accuracy %s, %.0f examples/s",
                 record.epoch, record.loss, record.accuracy,
                 "n/a" if record.val_accuracy is None else f"{record.val_accuracy:.4f}",
                 record.steps * batch_size / record.seconds)


def summarize(config: TrainConfig, runtime: Runtime, source: str, trainer: loop.Trainer,
              records: list[loop.EpochRecord], history: list[dict],
              test: tuple[float, float], resumed_from: dict | None) -> dict:
    """What summary.json records: the run's settings, its results and where it ran."""
    examples = [record.steps * config.batch_size for record in records]
    seconds = [record.seconds for record in records]
    # The speed of the epochs after the first, which fills the input cache; of the first alone
    # when there is no other.
    timed = slice(1 if len(records) > 1 else 0, None)
    test_loss, test_accuracy = test
    pipelines = trainer.pipelines
    return {
        "model": config.model, "dataset": config.dataset, "data_source": source,
        "epochs": config.epochs, "batch_size": config.batch_size,
        "learning_rate": config.learning_rate, "optimizer": config.optimizer,
        "loss": config.loss, "augment": config.augment, "seed": config.seed,
        "test_accuracy": test_accuracy, "test_loss": test_loss,
        "validation_accuracy": history[-1].get("val_accuracy") if history else None,
        "params": int(trainer.model.count_params()),
        "train_examples": pipelines.num_train, "test_examples": pipelines.num_test,
        "first_epoch_examples_per_sec": examples[0] / seconds[0] if records else None,
        "train_examples_per_sec": (sum(examples[timed]) / sum(seconds[timed])
                                   if records else None),
        "trace_seconds": trainer.trace_seconds,
        "strategy": runtime.choices.strategy,
        "replicas": runtime.strategy.num_replicas_in_sync,
        "workers": runtime.cluster.num_workers,
        "per_replica_batch_size": trainer.per_replica_batch_size,
        "precision": runtime.choices.precision,
        "jit_compile": runtime.choices.jit_compile,
        "fast_paths": list(runtime.choices.fast_paths),
        "steps_per_execution": config.steps_per_execution,
        "intra_op_threads": runtime.intra_op_threads,
        "deterministic": config.deterministic,
        "resumed_from": resumed_from,
        "weights_digest": trainer.weights_digest(),
        "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
        "workdir": config.workdir, "export_path": None,
    }


def run(config: TrainConfig, cluster: distribute.Cluster = distribute.Cluster()) -> Result:
    """Trains (or resumes), evaluates and exports one model; writes and returns the summary.

    `cluster` is this process's place in a multi-worker job (see `distribute.read_cluster`).
    Keras's global precision policy is as it was afterwards, for a notebook's next cells.
    """
    policy = keras.mixed_precision.global_policy()
    try:
        return _run(config, cluster)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _run(config: TrainConfig, cluster: distribute.Cluster) -> Result:
    started = time.perf_counter()
    config = config.resolved()
    runtime = set_up_runtime(config, cluster)
    arrays, pipelines = load_data(config)
    workdir = Workdir(config.workdir, writes=cluster.is_chief)
    workdir.claim(config.identity())
    if cluster.is_chief and config.export:
        files.make_directory(config.export_dir)  # Fails now rather than after training.
    trainer = build_trainer(config, runtime, pipelines, workdir.backup_dir)
    trainer.restore()
    finished = workdir.finished_summary()
    if trainer.step >= trainer.total_steps and finished:
        logging.info("Run in %s already finished; not retraining (use another --workdir for a "
                     "new run)", config.workdir)
        return Result(finished, trainer.model, workdir.history)
    resumed = resumed_from(trainer)

    def on_epoch_end(record: loop.EpochRecord) -> None:
        log_epoch(record, config.batch_size)
        workdir.record_epoch(dataclasses.asdict(record))

    records = trainer.train(on_epoch_end)
    test = trainer.evaluate(pipelines.test)
    logging.info("Test accuracy %.4f, loss %.4f", test[1], test[0])
    summary = summarize(config, runtime, arrays.source, trainer, records, workdir.history, test,
                        resumed)
    logging.info("Final weights digest %s (worker %d)", summary["weights_digest"],
                 cluster.task_index)
    if cluster.is_chief and config.export:
        summary["export_path"] = export.export_model(
            trainer.model, config.export_dir,
            metadata={**summary, "config": dataclasses.asdict(config)},
            class_names=data.CLASS_NAMES[config.dataset])
        logging.info("Exported %s", summary["export_path"])
    summary["wall_seconds"] = time.perf_counter() - started
    path = workdir.write_summary(summary)
    if workdir.writes:  # The chief; the other workers only return the summary.
        logging.info("Wrote %s", path)
    return Result(summary, trainer.model, workdir.history)


def build_compiled_model(config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """The model of a resolved `config`, compiled for Keras `fit` with the same optimizer and
    loss, in stock Keras (for benchmarks that time `fit`).

    Built in the scope of a strategy with several replicas, it takes one step per call: Keras
    3.15's `fit` with more (its multi-step loop) stops there with "You must feed a value for
    placeholder tensor".
    """
    steps_per_execution = config.steps_per_execution
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        steps_per_execution = 1
    model = build_model(config)
    model.compile(optimizer=objectives.make_optimizer(config.optimizer, config.learning_rate,
                                                      config.epochs * steps_per_epoch),
                  loss=objectives.make_loss(config.loss), metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    return model
