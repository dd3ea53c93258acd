"""Measures the project's speed against the TF1 tutorial and the machine's limit, in one run.

    python -m benchmarks.run            # full run: writes results.json and README.md here
    python -m benchmarks.run --tiny --output=/tmp/results.json --readme=/tmp/README.md

Sections: the float32 matmul peak and the TF1 baseline (bracketing the run: measured at the
start and again at the end, then pooled); the default MLP and its pipeline alone against the
TF1 baseline in interleaved rounds (fresh processes, one right after the other); per model,
training through the loop that `train.run` drives (`loop.Trainer` on `data.py`'s pipeline:
first epoch and steady epochs), training with Keras `fit` on one repeated batch (the model's
cost without any pipeline), loop variants (`steps_per_execution`, XLA) and serving from an
exported SavedModel; the input pipeline alone, with alternatives.
Every figure is a median of repeats with its spread, a ratio to the TF1 baseline and, where
it does arithmetic, a fraction of the peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import flops, peers, report
from keras_tutorial import cli, data, distribute, experiment, export, files, loop, models
from keras_tutorial.config import TrainConfig
from keras_tutorial.errors import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SERVING_BATCH = 1024
BATCH_LIMIT = 4096  # Larger than any batch: what a pass may drop as its last partial batch.


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    max_examples: int  # Training and test examples kept (0: all).
    validation_size: int  # Held out of training, as train.py does.
    matmul_size: int  # Square float32 matrices for the peak.
    matmul_chain: int  # Matmuls per timed call of the peak.
    repeats: int  # Timed repeats of every figure.
    chunk_steps: int  # Steps per timed chunk for synthetic data and variants.
    tf1_steps: int  # TF1 training steps per timed repeat.
    tf1_warmup: int
    latency_calls: int  # Batch-1 serving calls per timed repeat.
    throughput_calls: int  # Batch-1024 serving calls per timed repeat.
    rounds: int  # Interleaved rounds of the TF1 baseline and the default MLP.


FULL = Sizes(max_examples=0, validation_size=5000, matmul_size=2048, matmul_chain=4,
             repeats=3, chunk_steps=64, tf1_steps=430, tf1_warmup=50, latency_calls=100,
             throughput_calls=5, rounds=4)
TINY = Sizes(max_examples=640, validation_size=128, matmul_size=128, matmul_chain=2,
             repeats=2, chunk_steps=2, tf1_steps=4, tf1_warmup=2, latency_calls=3,
             throughput_calls=1, rounds=1)

@dataclasses.dataclass(frozen=True)
class Settings:
    """One run: the data, the models, the compile variants, the sizes and where results go."""

    dataset: str
    data_dir: str | None
    models: tuple[str, ...]
    batch_size: int
    seed: int
    variants: tuple[tuple[int, bool], ...]  # (steps_per_execution, jit_compile) pairs.
    sizes: Sizes
    output: str  # results.json
    readme: str  # README.md whose results section is rewritten.
    tiny: bool = False  # Tiny sizes (repeats may still be set on their own).
    model_worker: str | None = None  # Set in the subprocess that measures one model.
    train_only: bool = False  # That subprocess measures training on the pipeline only.
    peers: bool = True  # Also compare with PyTorch and Keras on JAX (peers.py).


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        """Bad flags end the run with one line, not a usage dump."""
        cli.fail(message)


def _csv(kind: type) -> callable:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(item) for item in text.split(",") if item)
        except (ValueError, KeyError):
            raise argparse.ArgumentTypeError(f"invalid list '{text}'") from None
    return parse


def _bool(text: str) -> bool:
    return {"true": True, "false": False}[text.lower()]


def parse_settings(argv: list[str]) -> Settings:
    """Reads the command line into `Settings`; a bad value is one line and exit status 2."""
    parser = _Parser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=data.DATASETS)
    parser.add_argument("--data_dir", help="IDX files or mnist.npz (see keras_tutorial/data.py;"
                        f" default for fashion_mnist: {FASHION_MNIST_DIR})")
    parser.add_argument("--models", type=_csv(str), default=models.MODELS,
                        help="comma-separated models to measure (default: all)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes: checks that everything runs, measures nothing")
    parser.add_argument("--repeats", type=int, help="timed repeats per figure (default 3)")
    parser.add_argument("--steps_per_execution", type=_csv(int), default=(1, 4, 16),
                        help="compile variants to compare (empty: none)")
    parser.add_argument("--jit_compile", type=_csv(_bool), default=(False, True),
                        help="compile variants, crossed with --steps_per_execution")
    parser.add_argument("--output", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--readme", default=os.path.join(HERE, "README.md"),
                        help="markdown file whose results section is rewritten")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="also train the models in PyTorch and Keras on JAX (peers.py)")
    parser.add_argument("--model_worker", choices=models.MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--train_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(models.MODELS))
    if unknown or not args.models:
        parser.error(f"--models must name some of {','.join(models.MODELS)}, got "
                     f"{','.join(unknown) or 'none'}")
    for name in ("batch_size", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if any(steps < 1 for steps in args.steps_per_execution):
        parser.error("--steps_per_execution values must be positive integers")
    sizes = TINY if args.tiny else FULL
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    return Settings(
        dataset=args.dataset, models=tuple(args.models),
        data_dir=args.data_dir or (FASHION_MNIST_DIR if args.dataset == "fashion_mnist" else None),
        batch_size=args.batch_size, seed=args.seed, sizes=sizes,
        variants=tuple((k, j) for k in args.steps_per_execution for j in args.jit_compile),
        output=args.output, readme=args.readme, tiny=args.tiny, model_worker=args.model_worker,
        train_only=args.train_only, peers=args.peers)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stats(values: list[float]) -> dict:
    """Median of repeats and how far the repeats strayed from it."""
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median, "repeats": values}


def figure(rates: list[float], baseline: str | None, baselines: dict[str, float],
           flops_per_example: int | None, peak_gflops: float) -> dict:
    """Examples/s (median of repeats), as a ratio to a TF1 figure and a fraction of peak."""
    s = stats(rates)
    gflops = s["median"] * flops_per_example / 1e9 if flops_per_example else None
    return {"examples_per_sec": s["median"], "min": s["min"], "max": s["max"],
            "spread": s["spread"], "repeats": rates, "baseline": baseline,
            "vs_tf1": s["median"] / baselines[baseline] if baseline else None,
            "flops_per_example": flops_per_example, "gflops": gflops,
            "peak_fraction": gflops / peak_gflops if gflops else None}


# --- The machine's limit --------------------------------------------------------------------

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


# --- The TF1 baseline -----------------------------------------------------------------------

def _subprocess_env() -> dict[str, str]:
    """This environment, with the repository on the path so that `-m benchmarks...` runs."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(HERE)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}


def tf1_baseline(settings: Settings, inference: bool = True) -> dict[str, list[float]]:
    """Examples/s of the TF1 replica, run in a subprocess (graph mode is process-global);
    training only unless `inference`."""
    sizes = settings.sizes
    latency_calls, throughput_calls = ((sizes.latency_calls, sizes.throughput_calls)
                                       if inference else (0, 0))
    command = [
        sys.executable, "-m", "benchmarks.tf1_baseline", f"--dataset={settings.dataset}",
        f"--max_examples={sizes.max_examples}", f"--validation_size={sizes.validation_size}",
        f"--seed={settings.seed}", f"--batch_size={settings.batch_size}",
        f"--steps={sizes.tf1_steps}", f"--warmup={sizes.tf1_warmup}",
        f"--latency_calls={latency_calls}", f"--throughput_calls={throughput_calls}",
        f"--throughput_batch={SERVING_BATCH}", f"--repeats={sizes.repeats}"]
    if settings.data_dir:
        command.append(f"--data_dir={os.path.abspath(settings.data_dir)}")
    result = subprocess.run(command, capture_output=True, text=True, env=_subprocess_env())
    if result.returncode != 0:
        raise RuntimeError(f"TF1 baseline failed: {result.stderr.strip().splitlines()[-1:]}")
    seconds = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "tf1_train": [sizes.tf1_steps * settings.batch_size / s
                      for s in seconds["train_seconds"]],
        "tf1_latency": [latency_calls / s for s in seconds["latency_seconds"]],
        "tf1_throughput": [throughput_calls * SERVING_BATCH / s
                           for s in seconds["throughput_seconds"]],
    }


# --- Training through the project's own code -------------------------------------------------

def train_config(name: str, settings: Settings) -> TrainConfig:
    """The training command's configuration of `name` with today's defaults."""
    return TrainConfig(model=name, dataset=settings.dataset, batch_size=settings.batch_size,
                       seed=settings.seed).resolved()


def machine_choices(name: str) -> distribute.Choices:
    """What `experiment.run` would choose for `name` on this machine."""
    return distribute.choose(distribute.detect_devices(), name)


def compiled_model(name: str, settings: Settings, steps_per_epoch: int) -> keras.Model:
    """The model exactly as `experiment.build_compiled_model` compiles it for `fit`."""
    keras.utils.set_random_seed(settings.seed)
    return experiment.build_compiled_model(train_config(name, settings), steps_per_epoch)


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch of `fit` (no validation runs here), without per-batch hooks."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def epoch_seconds(model: keras.Model, dataset: tf.data.Dataset, epochs: int,
                  steps_per_epoch: int | None = None) -> list[float]:
    """Seconds of each epoch of `fit`."""
    timer = EpochTimer()
    model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, shuffle=False,
              verbose=0, callbacks=[timer])
    return timer.seconds


def loop_rates(name: str, settings: Settings, pipelines: data.Pipelines, epochs: int,
               steps_per_execution: int | None = None, jit_compile: bool | None = None,
               ) -> tuple[list[float], keras.Model, float]:
    """Examples/s of each epoch of the loop that `experiment.run` drives, built as it builds it
    (`experiment.build_trainer`) on this machine's default strategy, with its defaults and
    choices unless a variant is given; the trained model; and the seconds spent tracing the
    training step before the first epoch."""
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
    """Examples/s of the first epoch and of `repeats` later (steady) epochs, full epochs; the
    model; the seconds of tracing before the first epoch."""
    rates, model, trace_seconds = loop_rates(name, settings, pipelines, 1 + settings.sizes.repeats)
    return rates[0], rates[1:], model, trace_seconds


def chunk_steps(model: keras.Model, steps: int) -> int:
    """`steps` rounded up to whole executions, so that every chunk does the same work."""
    return math.ceil(steps / model.steps_per_execution) * model.steps_per_execution


def train_in_chunks(model: keras.Model, dataset: tf.data.Dataset, batch_size: int, steps: int,
                    repeats: int) -> tuple[float, list[float]]:
    """Examples/s of a first chunk of `steps` steps (tracing included) and `repeats` more."""
    steps = chunk_steps(model, steps)
    seconds = epoch_seconds(model, dataset, 1 + repeats, steps_per_epoch=steps)
    return steps * batch_size / seconds[0], [steps * batch_size / s for s in seconds[1:]]


def one_repeated_batch(arrays: data.Arrays, batch_size: int) -> tf.data.Dataset:
    """Synthetic input: one real batch served forever, so the model runs without a pipeline."""
    batch = (arrays.x_train[:batch_size], arrays.y_train[:batch_size])
    return tf.data.Dataset.from_tensors(batch).repeat()


def model_pipelines(name: str, settings: Settings, arrays: data.Arrays) -> data.Pipelines:
    """The pipelines train.py would give `name` (its augmentation included) over `arrays`."""
    return data.make_pipelines(arrays, settings.batch_size, settings.seed,
                               settings.sizes.validation_size,
                               train_config(name, settings).augment)


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
    """Examples/s of the model's exported SavedModel at batch 1 and batch 1024, `repeats`
    times."""
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


def benchmark_model(name: str, settings: Settings, arrays: data.Arrays) -> dict:
    """Every raw measurement of one model."""
    sizes, batch_size = settings.sizes, settings.batch_size
    config = train_config(name, settings)
    pipelines = model_pipelines(name, settings, arrays)
    steps_per_epoch = loop.steps_per_epoch(pipelines.num_train, batch_size, 1)
    log(f"{name}: training on the pipeline, then serving")
    first, steady, model, trace_seconds = train_on_pipeline(name, settings, pipelines)
    log(f"  first epoch {first:,.0f}, steady {statistics.median(steady):,.0f} examples/s")
    latency, throughput = serving_rates(model, arrays.x_test, sizes)
    log(f"{name}: training on one repeated batch")
    synthetic_model = compiled_model(name, settings, steps_per_epoch)
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


def measure_model_worker(settings: Settings) -> dict:
    """In the model's own process: its threads as train.py would set them, then every raw
    measurement of it (or, `train_only`, its training on the pipeline, then full passes over
    that pipeline alone)."""
    name = settings.model_worker
    threads = distribute.set_intra_op_threads(machine_choices(name).intra_op_threads,
                                              required=False)
    arrays = data.load_arrays(settings.dataset, settings.data_dir, settings.sizes.max_examples,
                              settings.seed)
    if settings.train_only:
        pipelines = model_pipelines(name, settings, arrays)
        first, steady, _, _ = train_on_pipeline(name, settings, pipelines)
        _, alone = pipeline_rates(pipelines.epoch(settings.batch_size, settings.seed, epoch=0),
                                  pipelines.num_train, settings.sizes.repeats)
        return {"first_epoch": first, "train": steady, "pipeline": alone}
    raw = benchmark_model(name, settings, arrays)
    raw["defaults"]["intra_op_threads"] = threads
    return raw


def model_in_subprocess(name: str, settings: Settings, train_only: bool = False) -> dict:
    """Every raw measurement of one model (or its training only), taken in a fresh process:
    threads per op are set per model (`distribute.choose`) and only before
    TensorFlow starts."""
    ks = list(dict.fromkeys(k for k, _ in settings.variants))
    jits = list(dict.fromkeys(str(j).lower() for _, j in settings.variants))
    with tempfile.TemporaryDirectory() as scratch:
        raw_path = os.path.join(scratch, "raw.json")
        command = [
            sys.executable, "-m", "benchmarks.run", f"--model_worker={name}",
            f"--dataset={settings.dataset}", f"--batch_size={settings.batch_size}",
            f"--seed={settings.seed}", f"--repeats={settings.sizes.repeats}",
            f"--steps_per_execution={','.join(map(str, ks))}",
            f"--jit_compile={','.join(jits)}", f"--output={raw_path}"]
        if settings.data_dir:
            command.append(f"--data_dir={os.path.abspath(settings.data_dir)}")
        if settings.tiny:
            command.append("--tiny")
        if train_only:
            command.append("--train_only")
        result = subprocess.run(command, env=_subprocess_env())
        if result.returncode != 0:
            raise RuntimeError(f"measuring {name} failed (exit status {result.returncode})")
        with open(raw_path) as f:
            return json.load(f)


def interleaved_rounds(settings: Settings) -> list[dict]:
    """The TF1 baseline's training, then the default MLP's and its pipeline alone, each in a
    fresh process, round after round: a ratio within a round compares the two under the same
    load of the machine."""
    rounds = []
    for index in range(settings.sizes.rounds):
        log(f"MLP against TF1, round {index + 1} of {settings.sizes.rounds}")
        tf1 = tf1_baseline(settings, inference=False)["tf1_train"]
        mlp = model_in_subprocess("mlp", settings, train_only=True)
        mlp_rate = statistics.median(mlp["train"])
        rounds.append({"tf1_train": tf1, "mlp_train": mlp["train"],
                       "mlp_first_epoch": mlp["first_epoch"], "pipeline": mlp["pipeline"],
                       "vs_tf1": mlp_rate / statistics.median(tf1),
                       "first_vs_steady": mlp_rate / mlp["first_epoch"],
                       "pipeline_vs_mlp": statistics.median(mlp["pipeline"]) / mlp_rate})
    return rounds


# --- The input pipeline alone ---------------------------------------------------------------

def pipeline_variants(settings: Settings, arrays: data.Arrays) -> dict[str, tf.data.Dataset]:
    """The training loop's pipeline, and the tf.data-shuffled one that Keras `fit` users get."""
    pipelines = data.make_pipelines(arrays, settings.batch_size, settings.seed,
                                    settings.sizes.validation_size)
    return {
        "default (Pipelines.epoch, as the training loop reads it)":
            pipelines.epoch(settings.batch_size, settings.seed, epoch=0),
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


# --- Putting it together --------------------------------------------------------------------

def machine() -> dict:
    """What the numbers were measured on, and how busy it was."""
    cpu_model = distribute.cpu_info("model name") or platform.processor() or "unknown"
    return {"cpu_model": cpu_model, "cores": os.cpu_count(), "platform": platform.platform(),
            "gpus": len(tf.config.list_physical_devices("GPU")), "niceness": os.nice(0)}


def versions() -> dict:
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__}


def model_figures(raw: dict, baselines: dict[str, float], peak: float) -> dict:
    """One model's raw rates as figures; training counts 3x the forward FLOPs."""
    forward, serving = raw["forward_flops"], raw["serving_flops"]
    training = flops.TRAINING_TO_FORWARD * forward
    first = figure([raw["first_epoch"]], "tf1_train", baselines, training, peak)
    steady = figure(raw["train"], "tf1_train", baselines, training, peak)
    synthetic = figure(raw["synthetic"], "tf1_train", baselines, training, peak)
    first_chunk_s = raw["chunk_examples"] / raw["synthetic_first_chunk"]
    latency = figure(raw["serve_latency"], "tf1_latency", baselines, serving, peak)
    return {
        "flops_per_example": {"forward": forward, "training": training, "serving": serving},
        "defaults": raw["defaults"],
        "train": steady,
        "first_epoch": {**first, "seconds": raw["epoch_examples"] / raw["first_epoch"],
                        "trace_seconds": raw["trace_seconds"],
                        "steady_seconds": raw["epoch_examples"] / steady["examples_per_sec"],
                        "vs_steady": steady["examples_per_sec"] / raw["first_epoch"]},
        "synthetic": synthetic,
        "synthetic_first_chunk_extra_seconds":
            first_chunk_s - raw["chunk_examples"] / synthetic["examples_per_sec"],
        "serve_latency": {**latency,
                          "latency_ms": 1000 / latency["examples_per_sec"]},
        "serve_throughput": figure(raw["serve_throughput"], "tf1_throughput", baselines,
                                   serving, peak),
        "variants": [{"steps_per_execution": v["steps_per_execution"],
                      "jit_compile": v["jit_compile"],
                      **figure(v["rates"], "tf1_train", baselines, training, peak)}
                     for v in raw["variants"]],
    }


def targets(results: dict) -> list[dict]:
    """The speed targets (benchmarks/README.md, Goals), each with its measured value and
    whether it was met."""
    found = results["models"]
    rows = []

    def add(name: str, value: float, comparison: str, threshold: float) -> None:
        met = value >= threshold if comparison == ">=" else value <= threshold
        rows.append({"target": name, "value": value, "comparison": comparison,
                     "threshold": threshold, "met": met})

    rounds = results["interleaved"]
    if rounds["rounds"]:
        add("MLP training vs TF1 (interleaved rounds, median)", rounds["vs_tf1"]["median"],
            ">=", 1.25)
    if rounds["rounds"]:
        add("MLP first epoch / steady epoch (interleaved rounds, median)",
            rounds["first_vs_steady"]["median"], "<=", 1.3)
    for name, figures in found.items():
        if name != "mlp":
            add(f"{name.upper()} first epoch / steady epoch",
                figures["first_epoch"]["vs_steady"], "<=", 1.3)
    if rounds["rounds"] and results["pipeline"]["fastest_model"] == "mlp":
        add("pipeline / fastest model, the MLP (interleaved rounds, median)",
            rounds["pipeline_vs_mlp"]["median"], ">=", 10)
    else:
        add("pipeline / fastest model", results["pipeline"]["vs_fastest_model"], ">=", 10)
    return rows


def all_spreads(results: dict) -> list[float]:
    """The relative spread (max - min) / median of every figure in the results."""
    spreads = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "spread" in node and len(node.get("repeats", [])) > 1:
                spreads.append(node["spread"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(results)
    return spreads


def benchmark(settings: Settings) -> dict:
    """Runs every section and returns the results as written to JSON."""
    sizes = settings.sizes
    load_start = os.getloadavg()
    arrays = data.load_arrays(settings.dataset, settings.data_dir, sizes.max_examples,
                              settings.seed)
    log(f"Data: {arrays.source}. Matmul peak and TF1 baseline (start)")
    peak_start = matmul_peak(sizes.matmul_size, sizes.matmul_chain, sizes.repeats)
    tf1_start = tf1_baseline(settings)
    rounds = interleaved_rounds(settings) if "mlp" in settings.models else []
    raw_models = {name: model_in_subprocess(name, settings) for name in settings.models}
    log("Input pipeline alone")
    num_train = len(arrays.x_train) - sizes.validation_size
    raw_pipelines = {name: pipeline_rates(dataset, num_train, sizes.repeats)
                     for name, dataset in pipeline_variants(settings, arrays).items()}
    log("Matmul peak and TF1 baseline (end)")
    peak_end = matmul_peak(sizes.matmul_size, sizes.matmul_chain, sizes.repeats)
    tf1_end = tf1_baseline(settings)

    # A repeat slower than the fastest measures the machine's load, not its limit.
    peak = stats(peak_start + peak_end)
    peak_gflops = peak["max"]
    baseline_rates = {key: tf1_start[key] + tf1_end[key] for key in tf1_start}
    baselines = {key: statistics.median(rates) for key, rates in baseline_rates.items()}
    tf1_flops = flops.tutorial_mlp_forward_flops()
    tf1_flops_per_figure = {"tf1_train": flops.TRAINING_TO_FORWARD * tf1_flops,
                            "tf1_latency": tf1_flops, "tf1_throughput": tf1_flops}
    results = {
        "command": " ".join(["python -m benchmarks.run"] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "settings": {"tiny": settings.tiny, "dataset": settings.dataset,
                     "data_source": arrays.source,
                     "batch_size": settings.batch_size, "seed": settings.seed,
                     "serving_batch": SERVING_BATCH, **dataclasses.asdict(sizes)},
        "peak": {"gflops": peak_gflops, **peak,
                 "start_median": statistics.median(peak_start),
                 "end_median": statistics.median(peak_end)},
        "baseline": {key: {**figure(rates, key, baselines, tf1_flops_per_figure[key],
                                    peak_gflops),
                           "start_median": statistics.median(tf1_start[key]),
                           "end_median": statistics.median(tf1_end[key])}
                     for key, rates in baseline_rates.items()},
        "models": {name: model_figures(raw, baselines, peak_gflops)
                   for name, raw in raw_models.items()},
        "interleaved": {"rounds": rounds, **({
            "vs_tf1": stats([r["vs_tf1"] for r in rounds]),
            "first_vs_steady": stats([r["first_vs_steady"] for r in rounds]),
            "pipeline_vs_mlp": stats([r["pipeline_vs_mlp"] for r in rounds])} if rounds else {})},
    }
    pipelines = {name: {
        "first_pass": figure([first], "tf1_train", baselines, None, peak_gflops),
        "steady": figure(rates, "tf1_train", baselines, None, peak_gflops)}
                 for name, (first, rates) in raw_pipelines.items()}
    default = pipelines.pop("default (Pipelines.epoch, as the training loop reads it)")
    models_found = results["models"]
    fastest = max(models_found, key=lambda name: models_found[name]["train"]["examples_per_sec"])
    results["pipeline"] = {
        "examples_per_pass": num_train,
        "train": default["steady"], "first_pass": default["first_pass"],
        "fastest_model": fastest,
        "vs_fastest_model": (default["steady"]["examples_per_sec"]
                             / models_found[fastest]["train"]["examples_per_sec"]),
        "alternatives": pipelines}
    results["targets"] = targets(results)
    spreads = all_spreads(results)
    results["noise"] = {
        "median_spread": statistics.median(spreads), "max_spread": max(spreads),
        "peak_end_vs_start": statistics.median(peak_end) / statistics.median(peak_start),
        "tf1_end_vs_start": statistics.median(tf1_end["tf1_train"]) / statistics.median(
            tf1_start["tf1_train"]),
        "load_average_start": load_start[0], "load_average_end": os.getloadavg()[0]}
    return results


def write_json(path: str, content: dict) -> None:
    """Writes JSON atomically, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_json(path, content)


def main(argv: list[str]) -> None:
    settings = parse_settings(argv)
    if settings.model_worker:
        write_json(settings.output, measure_model_worker(settings))
        return
    try:
        results = benchmark(settings)
        if settings.peers:
            results["peers"] = peers.compare(settings)
    except UserError as e:
        cli.fail(str(e))
    write_json(settings.output, results)
    report.update_readme(settings.readme, results)
    peers.update_readme(settings.readme, results.get("peers"))
    log(f"Wrote {settings.output} and {settings.readme}")


if __name__ == "__main__":
    main(sys.argv[1:])
