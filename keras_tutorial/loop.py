"""One training loop for every tf.distribute strategy, backed up so that a killed run resumes.

Keras 3.15's `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), and its
BackupAndRestore replays the first epochs' shuffles and restarts an epoch from batch 0. Here
everything a step depends on (data order, learning rate, dropout state) follows from the seed
and the checkpointed step counter, so the resumed run is the run that was interrupted. Ctrl-C or
SIGTERM (a preempted machine) stops training after the current call, backed up at that step.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import time
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from keras_tutorial.data import Pipelines
from keras_tutorial.distribute import Choices
from keras_tutorial.errors import Interrupted, UserError
from keras_tutorial.fastpath import split_batch
from keras_tutorial.stopping import STOP_SIGNALS, CaughtSignal, catch_stop_signals


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How to train: sizes, seeds, backups, and where this process stands in the cluster."""

    epochs: int
    global_batch_size: int
    seed: int
    backup_dir: str
    steps_per_execution: int = 1
    backup_every_steps: int = 0
    # The run's choices, as the model was built with them; the loop reads XLA and the step's
    # batch slices from them.
    choices: Choices = Choices()
    num_workers: int = 1
    task_index: int = 0
    verbose: bool = True
    # A bar redrawn at every call, for a terminal or a notebook; else one line per epoch, since
    # a file or a pipe would keep every redraw.
    progress_bar: bool = False

    @property
    def jit_compile(self) -> bool:
        """Whether XLA compiles the gradients' part of the step."""
        return self.choices.jit_compile

    @property
    def step_slices(self) -> int:
        """Parts of each replica's batch that the training step runs through the model side by
        side, for a CPU's cores; only for models whose examples never meet (no batch norm)."""
        return self.choices.step_slices


@dataclasses.dataclass
class EpochRecord:
    """What one epoch achieved; `seconds` covers this process's steps of it (not validation)."""

    epoch: int
    loss: float
    accuracy: float
    steps: int
    seconds: float
    val_loss: float | None = None
    val_accuracy: float | None = None


def steps_per_epoch(num_train: int, global_batch_size: int, num_workers: int) -> int:
    """Full global batches per epoch when each worker reads an equal shard."""
    return (num_train // num_workers) // (global_batch_size // num_workers)


def chunks(first_step: int, steps_per_epoch: int, steps_per_execution: int,
           backup_every_steps: int = 0) -> Iterator[tuple[int, bool]]:
    """(steps, back up after them) for each call from `first_step` to the end of its epoch.

    Calls take `steps_per_execution` steps, fewer where one must end on a backup point (every
    `backup_every_steps` global steps) or at the end of the epoch.
    """
    epoch_end = (first_step // steps_per_epoch + 1) * steps_per_epoch
    step = first_step
    while step < epoch_end:
        end = min(epoch_end, step + steps_per_execution)
        if backup_every_steps:
            end = min(end, (step // backup_every_steps + 1) * backup_every_steps)
        yield end - step, bool(backup_every_steps) and end % backup_every_steps == 0
        step = end


class Trainer:
    """Trains `model` under `strategy`, checkpointing to `config.backup_dir`.

    Create the model and the optimizer inside `strategy.scope()` before this: the
    optimizer is built here, in the scope, as Keras 3 needs under distribution
    (keras-team/keras#23085).
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer,
                 loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
                 pipelines: Pipelines, config: LoopConfig):
        replicas = strategy.num_replicas_in_sync
        if config.global_batch_size < replicas or config.global_batch_size % replicas:
            raise UserError(f"batch size {config.global_batch_size} must be a multiple of the "
                            f"{replicas} replicas (it is the global batch, split among them)")
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.loss_fn, self.pipelines, self.config = loss_fn, pipelines, config
        self.per_replica_batch_size = config.global_batch_size // replicas
        self.local_replicas = replicas // config.num_workers
        self.steps_per_epoch = steps_per_epoch(pipelines.num_train, config.global_batch_size,
                                               config.num_workers)
        if self.steps_per_epoch < 1:
            raise UserError(f"batch size {config.global_batch_size} is larger than the "
                            f"{pipelines.num_train} training examples")
        self.total_steps = config.epochs * self.steps_per_epoch
        with strategy.scope():
            optimizer.build(model.trainable_variables)
        # Steps taken, counted here: a loss-scale optimizer does not count the steps it skips
        # on overflowing float16 gradients, and the data position must not fall behind.
        self._steps_taken = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_taken")
        checkpoint = tf.train.Checkpoint(model_variables=model.variables,
                                         optimizer_variables=optimizer.variables,
                                         steps_taken=self._steps_taken)
        # Every worker saves (the save is collective); only the chief's copy is kept.
        self._write_dir = config.backup_dir if config.task_index == 0 else os.path.join(
            config.backup_dir, f".worker-{config.task_index}")
        self._checkpoint = checkpoint
        self._manager = tf.train.CheckpointManager(checkpoint, self._write_dir, max_to_keep=2)
        self._gradients = (tf.function(self._compute_gradients, jit_compile=True,
                                       autograph=False)
                           if config.jit_compile else self._compute_gradients)
        self.trace_seconds = 0.0

    @property
    def step(self) -> int:
        """Global steps taken so far, skipped updates included."""
        return int(self._steps_taken.numpy())

    def restore(self) -> int:
        """Restores the newest backup in `backup_dir`, if any; returns the global step."""
        latest = tf.train.latest_checkpoint(self.config.backup_dir)
        if not latest:
            return self.step
        if any(name.startswith("steps_taken/") for name, _ in tf.train.list_variables(latest)):
            self._checkpoint.restore(latest).assert_existing_objects_matched()
        else:  # A backup of an earlier release, which counted the optimizer's updates.
            tf.train.Checkpoint(model_variables=self.model.variables,
                                optimizer_variables=self.optimizer.variables,
                                ).restore(latest).assert_existing_objects_matched()
            self._steps_taken.assign(tf.cast(self.optimizer.iterations, tf.int64))
        return self.step

    def backup(self) -> None:
        try:
            self._manager.save(checkpoint_number=self.step)
        except tf.errors.OpError:
            # A failed save (a full disk) leaves the parts it wrote in "<checkpoint>_temp",
            # which no restore reads; they would only hold the disk.
            for parts in glob.glob(os.path.join(glob.escape(self._write_dir), "*_temp")):
                shutil.rmtree(parts, ignore_errors=True)
            raise
        if self.config.task_index != 0:
            shutil.rmtree(self._write_dir, ignore_errors=True)

    def _training_logits(self, images):
        """The model's logits in training; with `step_slices`, each slice of the batch runs
        as its own chain of ops (the gradients add up over them), which a CPU's cores run
        side by side."""
        slices = self.config.step_slices
        if slices == 1 or self.per_replica_batch_size < slices:
            return self.model(images, training=True)
        return tf.concat([self.model(part, training=True)
                          for (part,) in split_batch([images], slices)], axis=0)

    def _compute_gradients(self, images, labels):
        with tf.GradientTape() as tape:
            logits = self._training_logits(images)
            loss = tf.nn.compute_average_loss(
                self.loss_fn(labels, logits), global_batch_size=self.config.global_batch_size)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels), tf.float32))
        return loss, correct, gradients

    def _replica_step(self, images, labels):
        loss, correct, gradients = self._gradients(images, labels)
        # apply_gradients all-reduces the gradients across replicas and workers.
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return loss, correct

    def traced_step(self, images: tf.TensorSpec, labels: tf.TensorSpec,
                    ) -> tuple[tf.types.experimental.ConcreteFunction, ...]:
        """One replica's step traced (not run) for these inputs, and the gradients' part of it,
        the one XLA compiles when asked: graphs to check for the ops a device lacks."""
        gradients = (self._gradients if self.config.jit_compile
                     else tf.function(self._compute_gradients, autograph=False))
        return (tf.function(self._replica_step, autograph=False).get_concrete_function(
                    images, labels),
                gradients.get_concrete_function(images, labels))

    # The step functions are traced without AutoGraph: their loops and branches are TensorFlow's
    # own, so rewriting their source (and the model's) would only slow every start.
    @tf.function(autograph=False)
    def _train_steps(self, iterator, num_steps):
        def step(taken, loss_sum, correct_sum):
            loss, correct = self.strategy.run(self._replica_step, args=next(iterator))
            return (taken + 1, loss_sum + self.strategy.reduce("SUM", loss, axis=None),
                    correct_sum + self.strategy.reduce("SUM", correct, axis=None))

        _, loss_sum, correct_sum = tf.while_loop(
            lambda taken, *_: taken < num_steps, step,
            (tf.constant(0, num_steps.dtype), tf.constant(0.0), tf.constant(0.0)))
        self._steps_taken.assign_add(tf.cast(num_steps, tf.int64))
        return loss_sum, correct_sum

    @tf.function(autograph=False)
    def _evaluate_batch(self, images, labels):
        logits = self.model(images, training=False)
        correct = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
        return (tf.reduce_sum(self.loss_fn(labels, logits)),
                tf.reduce_sum(tf.cast(correct, tf.float32)), tf.shape(labels)[0])

    def evaluate(self, dataset: tf.data.Dataset) -> tuple[float, float]:
        """Mean loss and accuracy over every example of `dataset`, partial last batch included.

        Each worker evaluates the whole split locally: the weights are identical everywhere, so
        no collective op is needed and no worker waits on another.
        """
        loss_sum = correct_sum = count = 0.0
        for images, labels in dataset:
            batch_loss, batch_correct, batch_count = self._evaluate_batch(images, labels)
            loss_sum += float(batch_loss)
            correct_sum += float(batch_correct)
            count += int(batch_count)
        return loss_sum / count, correct_sum / count

    def _epoch_iterator(self, epoch: int, skip_steps: int):
        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return self.pipelines.epoch(
                context.get_per_replica_batch_size(self.config.global_batch_size),
                self.config.seed, epoch, context.num_input_pipelines, context.input_pipeline_id,
                skip_batches=skip_steps * self.local_replicas)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _trace(self, iterator) -> None:
        """Builds the training step's graph, and runs it once for zero steps so that TensorFlow
        optimises it and creates its kernels, before any epoch's clock starts: that is done
        once per run, and left in the first epoch it would hide that epoch's true speed."""
        started = time.perf_counter()
        self._train_steps(iterator, tf.constant(0))
        self.trace_seconds = time.perf_counter() - started

    def position(self) -> str:
        """Where training stands, as the resume and interrupt lines name it."""
        if self.step >= self.total_steps:
            return f"the end of epoch {self.config.epochs}"
        epoch, step = divmod(self.step, self.steps_per_epoch)
        return f"epoch {epoch + 1}, step {step}"

    @tf.function(autograph=False)
    def _count_caught(self, caught):
        """For each of STOP_SIGNALS, the replicas of all workers whose worker caught it."""
        return self.strategy.reduce("SUM", self.strategy.run(tf.identity, args=(caught,)),
                                    axis=None)

    # Not tf.distribute.experimental.PreemptionCheckpointHandler, which is made for another
    # loop: it counts the calls of its `run` (one step each) in a variable it adds to the
    # backup, restores the newest backup itself when made, watches SIGTERM only, with a handler
    # it never takes back, and agrees on the step through coordination-service keys that can be
    # set once in a cluster's life. When made, it asks GCE's metadata server where it runs, and
    # on a GCE CPU VM it then does nothing.
    def _agreed_stop(self, caught: CaughtSignal) -> int:
        """The signal that stops training at this step (0: none). With several workers, all
        stop if any caught one, since a backup is collective: each with its own signal, or
        else SIGTERM if any worker caught it, else SIGINT."""
        own = caught.number  # Read once: a signal may come while the workers compare theirs.
        if self.config.num_workers == 1:
            return own
        counts = self._count_caught(tf.constant([float(own == s) for s in STOP_SIGNALS]))
        return own or max((s for s, count in zip(STOP_SIGNALS, counts.numpy()) if count),
                          default=0)

    def _stop_if_asked(self, caught: CaughtSignal, backed_up: bool) -> None:
        """Backs up (unless just done) and raises `Interrupted` if a stop signal came."""
        signal_number = self._agreed_stop(caught)
        if not signal_number:
            return
        if not backed_up:
            self.backup()
            if self.config.verbose and self.config.progress_bar:
                print(flush=True)  # Ends the bar's line before the message.
        raise Interrupted(f"interrupted at {self.position()}: run the same command to resume",
                          signal_number)

    def train(self, on_epoch_end: Callable[[EpochRecord], None]) -> list[EpochRecord]:
        """Runs the remaining epochs; returns the records of the epochs finished here.

        SIGINT or SIGTERM ends it with `Interrupted` after the current call (or, in an epoch's
        last call, once the epoch is recorded), backed up there for an exact resume.
        """
        with catch_stop_signals() as caught:
            return self._train(on_epoch_end, caught)

    def _train(self, on_epoch_end: Callable[[EpochRecord], None],
               caught: CaughtSignal) -> list[EpochRecord]:
        records = []
        while self.step < self.total_steps:
            epoch, done = divmod(self.step, self.steps_per_epoch)
            epoch_end = (epoch + 1) * self.steps_per_epoch
            iterator = self._epoch_iterator(epoch, skip_steps=done)
            if not records:
                self._trace(iterator)
            progress = keras.utils.Progbar(
                self.steps_per_epoch, stateful_metrics=["loss", "accuracy"],
                verbose=(1 if self.config.progress_bar else 2) if self.config.verbose else 0)
            if self.config.verbose:
                print(f"Epoch {epoch + 1}/{self.config.epochs}", flush=True)
            loss_sum = correct_sum = 0.0
            started = time.perf_counter()
            for num_steps, backup_now in chunks(self.step, self.steps_per_epoch,
                                                self.config.steps_per_execution,
                                                self.config.backup_every_steps):
                loss, correct = self._train_steps(iterator, tf.constant(num_steps))
                loss_sum += float(loss)
                correct_sum += float(correct)
                steps_here = self.step - epoch * self.steps_per_epoch - done
                progress.update(done + steps_here, [
                    ("loss", loss_sum / steps_here),
                    ("accuracy", correct_sum / (steps_here * self.config.global_batch_size))])
                if self.step < epoch_end:  # The epoch's last call stops once it is recorded.
                    self._stop_if_asked(caught, backed_up=False)
                if backup_now:
                    self.backup()
            seconds = time.perf_counter() - started
            steps_here = self.steps_per_epoch - done
            record = EpochRecord(
                epoch=epoch + 1, loss=loss_sum / steps_here,
                accuracy=correct_sum / (steps_here * self.config.global_batch_size),
                steps=steps_here, seconds=seconds)
            if self.pipelines.validation is not None:
                record.val_loss, record.val_accuracy = self.evaluate(self.pipelines.validation)
            self.backup()
            records.append(record)
            on_epoch_end(record)
            self._stop_if_asked(caught, backed_up=True)
        return records

    def examples_digest(self, epoch: int) -> str:
        """A fingerprint of the examples this worker reads in `epoch` (workers differ)."""
        indices = np.sort(self.pipelines.shard_order(
            self.config.seed, epoch, self.config.num_workers, self.config.task_index).numpy())
        return hashlib.sha256(indices.tobytes()).hexdigest()[:16]

    def weights_digest(self) -> str:
        """A fingerprint of every weight, to show that two runs or two workers ended equal."""
        digest = hashlib.sha256()
        for variable in self.model.weights:
            digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
        return digest.hexdigest()[:16]
