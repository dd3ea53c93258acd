"""Times one configuration in this process: the matmul peak, a model's training through the
loop that `experiment.run` drives and through Keras `fit` on one repeated batch, its compile
variants, serving from its exported SavedModel, and the input pipeline alone.

Every function returns rates (examples or GFLOP per second), one per timed repeat; which
process measures what, and in which order, is `orchestrate.py`'s.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import flops
from benchmarks.common import SERVING_BATCH, Settings, Sizes, log
from keras_tutorial import data, distribute, experiment, export, loop
from keras_tutorial.config import TrainConfig

BATCH_LIMIT = 4096  # Larger than any batch: what a pass may drop as its last partial batch.
DEFAULT_PIPELINE = "default (Pipelines.epoch, as the training loop reads it)"


def matmul_peak(size: int, chain: int, repeats: int) -> list[float]:
    """GFLOP/s of a chain of square float32 matmuls in one tf.function, `repeats` times."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((size, size), dtype=np.float32))
    b = tf.constant(rng.standard_normal((size, size), dtype=np.float32) / math.sqrt(size))

    @tf.function
    def matmuls(a: tf.Tensor) -> tf.Tensor:
        for _ in range(chain):
            a = tf.matmul(a, b)
        return tf.reduce_sum(a)

    matmuls(a).numpy()
    results = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmuls(a).numpy()
        results.append(2 * size**3 * chain / (time.perf_counter() - start) / 1e9)
    return results


def train_config(name: str, settings: Settings) -> TrainConfig:
    """The training command's configuration of `name` with today's defaults."""
    return TrainConfig(model=name, dataset=settings.dataset, batch_size=settings.batch_size,
                       seed=settings.seed).resolved()


def machine_choices(name: str) -> distribute.Choices:
    """What `experiment.run` would choose for `name` on this machine."""
    return distribute.choose(distribute.detect_devices(), name)


def model_pipelines(name: str, settings: Settings, arrays: data.Arrays) -> data.Pipelines:
    """The pipelines train.py would give `name` (its augmentation included) over `arrays`."""
    return data.make_pipelines(arrays, settings.batch_size, settings.seed,
                               settings.sizes.validation_size,
                               train_config(name, settings).augment)


# --- Training through the loop, and through Keras fit ---------------------------------------

def loop_rates(name: str, settings: Settings, pipelines: data.Pipelines, epochs: int,
               steps_per_execution: int | None = None, jit_compile: bool | None = None,
               ) -> tuple[list[float], keras.Model, float]:
    """Examples/s of each epoch of the loop that `experiment.run` drives, built as it builds it
    (`experiment.build_trainer`) with its defaults and choices unless a variant is given; the
    trained model; the seconds of tracing the training step before the first epoch."""
    config = train_config(name, settings)
    config = dataclasses.replace(
        config, epochs=epochs, verbose=False,
        steps_per_execution=steps_per_execution or config.steps_per_execution,
        jit_compile="auto" if jit_compile is None else str(jit_compile).lower())
    runtime = experiment.set_up_runtime(config, distribute.Cluster())
    with tempfile.TemporaryDirectory() as backup_dir:
        trainer = experiment.build_trainer(config, runtime, pipelines, backup_dir)
        records = trainer.train(lambda record: None)
    return ([r.steps * settings.batch_size / r.seconds for r in records], trainer.model,
            trainer.trace_seconds)


def train_on_pipeline(name: str, settings: Settings, pipelines: data.Pipelines,
                      ) -> tuple[float, list[float], keras.Model, float]:
    """Examples/s of the first full epoch and of `repeats` later (steady) ones; the model; the
    seconds of tracing before the first epoch."""
    rates, model, trace_seconds = loop_rates(name, settings, pipelines, 1 + settings.sizes.repeats)
    return rates[0], rates[1:], model, trace_seconds


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch of `fit` (no validation runs here), without per-batch hooks."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def chunk_steps(model: keras.Model, steps: int) -> int:
    """`steps` rounded up to whole executions, so that every chunk does the same work."""
    return math.ceil(steps / model.steps_per_execution) * model.steps_per_execution


def train_in_chunks(model: keras.Model, dataset: tf.data.Dataset, batch_size: int, steps: int,
                    repeats: int) -> tuple[float, list[float]]:
    """Examples/s of `fit` over a first chunk of `steps` steps (tracing included) and
    `repeats` more."""
    steps = chunk_steps(model, steps)
    timer = EpochTimer()
    model.fit(dataset, epochs=1 + repeats, steps_per_epoch=steps, shuffle=False, verbose=0,
              callbacks=[timer])
    rates = [steps * batch_size / seconds for seconds in timer.seconds]
    return rates[0], rates[1:]


def one_repeated_batch(arrays: data.Arrays, batch_size: int) -> tf.data.Dataset:
    """Synthetic input: one real batch served forever, so the model runs without a pipeline."""
    batch = (arrays.x_train[:batch_size], arrays.y_train[:batch_size])
    return tf.data.Dataset.from_tensors(batch).repeat()


def compile_variants(name: str, settings: Settings, arrays: data.Arrays) -> list[dict]:
    """Steady examples/s of the loop with each (steps_per_execution, jit) variant, on epochs
    cut to `chunk_steps` steps."""
    sizes = settings.sizes
    keep = sizes.chunk_steps * settings.batch_size + sizes.validation_size
    short = model_pipelines(name, settings, dataclasses.replace(
        arrays, x_train=arrays.x_train[:keep], y_train=arrays.y_train[:keep]))
    results = []
    for steps_per_execution, jit_compile in settings.variants:
        log(f"{name}: steps_per_execution={steps_per_execution} jit_compile={jit_compile}")
        rates, _, _ = loop_rates(name, settings, short, 1 + sizes.repeats, steps_per_execution,
                                 jit_compile)
        log(f"  {statistics.median(rates[1:]):,.0f} examples/s")
        results.append({"steps_per_execution": steps_per_execution,
                        "jit_compile": jit_compile, "rates": rates[1:]})
    return results


# --- Serving --------------------------------------------------------------------------------

def serving_rates(model: keras.Model, images: np.ndarray, sizes: Sizes,
                  ) -> tuple[list[float], list[float]]:
    """Examples/s of the model's exported SavedModel at batch 1 and at `SERVING_BATCH`,
    `repeats` times."""
    with tempfile.TemporaryDirectory() as export_dir:
        path = export.export_model(model, export_dir)
        serve = tf.saved_model.load(path).signatures["serving_default"]

        def rates(batch: tf.Tensor, calls: int) -> list[float]:
            serve(images=batch)
            results = []
            for _ in range(sizes.repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    serve(images=batch)["classes"].numpy()
                results.append(calls * len(batch) / (time.perf_counter() - start))
            return results

        single = tf.constant(images[:1])
        big = tf.constant(np.resize(images, (SERVING_BATCH,) + images.shape[1:]))
        return rates(single, sizes.latency_calls), rates(big, sizes.throughput_calls)


# --- The input pipeline alone ---------------------------------------------------------------

def pipeline_variants(settings: Settings, arrays: data.Arrays) -> dict[str, tf.data.Dataset]:
    """The training loop's pipeline, and the tf.data-shuffled one that Keras `fit` users get."""
    pipelines = data.make_pipelines(arrays, settings.batch_size, settings.seed,
                                    settings.sizes.validation_size)
    return {
        DEFAULT_PIPELINE: pipelines.epoch(settings.batch_size, settings.seed, epoch=0),
        "Pipelines.train (cache, shuffle, batch, prefetch; for fit)": pipelines.train,
    }


@tf.autograph.experimental.do_not_convert
def _count_examples(count: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
    return count + tf.shape(batch[1], tf.int64)[0]


def pipeline_rates(dataset: tf.data.Dataset, num_examples: int, repeats: int,
                   ) -> tuple[float, list[float]]:
    """Examples/s of full passes counted inside TF (`reduce`): the first pass, then steady.

    A pass yields `num_examples`, less the last partial batch where the pipeline drops it.
    """
    def one_pass() -> float:
        start = time.perf_counter()
        count = int(dataset.reduce(tf.constant(0, tf.int64), _count_examples))
        seconds = time.perf_counter() - start
        if not 0 < num_examples - count < BATCH_LIMIT and count != num_examples:
            raise RuntimeError(f"pipeline gave {count} examples, expected {num_examples}")
        return count / seconds

    first = one_pass()
    return first, [one_pass() for _ in range(repeats)]


# --- One model, every measurement -----------------------------------------------------------

def measure_model(name: str, settings: Settings, arrays: data.Arrays) -> dict:
    """Every raw measurement of one model: training on its pipeline, serving it, training on
    one repeated batch, its compile variants; its FLOPs and defaults."""
    sizes, batch_size = settings.sizes, settings.batch_size
    config = train_config(name, settings)
    pipelines = model_pipelines(name, settings, arrays)
    log(f"{name}: training on the pipeline, then serving")
    first, steady, model, trace_seconds = train_on_pipeline(name, settings, pipelines)
    log(f"  first epoch {first:,.0f}, steady {statistics.median(steady):,.0f} examples/s")
    latency, throughput = serving_rates(model, arrays.x_test, sizes)
    log(f"{name}: training on one repeated batch")
    steps_per_epoch = loop.steps_per_epoch(pipelines.num_train, batch_size, 1)
    keras.utils.set_random_seed(settings.seed)
    synthetic_model = experiment.build_compiled_model(config, steps_per_epoch)
    synthetic_first, synthetic = train_in_chunks(
        synthetic_model, one_repeated_batch(arrays, batch_size), batch_size, sizes.chunk_steps,
        sizes.repeats)
    return {
        "forward_flops": flops.forward_flops(model),
        "serving_flops": flops.serving_flops(model),
        "defaults": {"steps_per_execution": config.steps_per_execution,
                     "jit_compile": machine_choices(name).jit_compile},
        "epoch_examples": pipelines.num_train,
        "chunk_examples": chunk_steps(synthetic_model, sizes.chunk_steps) * batch_size,
        "first_epoch": first, "trace_seconds": trace_seconds, "train": steady,
        "synthetic_first_chunk": synthetic_first, "synthetic": synthetic,
        "serve_latency": latency, "serve_throughput": throughput,
        "variants": compile_variants(name, settings, arrays),
    }


def measure_training(name: str, settings: Settings, arrays: data.Arrays) -> dict:
    """One model's training on its pipeline (first and steady epochs), then full passes over
    that pipeline alone: one interleaved round's share."""
    pipelines = model_pipelines(name, settings, arrays)
    first, steady, _, _ = train_on_pipeline(name, settings, pipelines)
    _, alone = pipeline_rates(pipelines.epoch(settings.batch_size, settings.seed, epoch=0),
                              pipelines.num_train, settings.sizes.repeats)
    return {"first_epoch": first, "train": steady, "pipeline": alone}
