"""Which measurements a run takes, in what order and in which process.

The matmul peak and the TF1 baseline bracket the run (measured at the start and again at the
end); the default MLP and its pipeline alone run against the TF1 baseline in interleaved
rounds, fresh processes one right after the other; each model is measured in a fresh process
(`model_worker.py`); the input pipeline alone, with alternatives, last. `measure` returns the
raw rates, which `figures.py` turns into results.
"""

from __future__ import annotations

import datetime
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from benchmarks import common, timing
from benchmarks.common import SERVING_BATCH, Settings, log
from keras_tutorial import data, distribute


def tf1_baseline(settings: Settings, inference: bool = True) -> dict[str, list[float]]:
    """Examples/s of the TF1 replica (`tf1_baseline.py`), run in a subprocess since graph mode
    is process-global; training only unless `inference`."""
    sizes = settings.sizes
    latency_calls, throughput_calls = ((sizes.latency_calls, sizes.throughput_calls)
                                       if inference else (0, 0))
    args = [f"--dataset={settings.dataset}", f"--max_examples={sizes.max_examples}",
            f"--validation_size={sizes.validation_size}", f"--seed={settings.seed}",
            f"--batch_size={settings.batch_size}", f"--steps={sizes.tf1_steps}",
            f"--warmup={sizes.tf1_warmup}", f"--latency_calls={latency_calls}",
            f"--throughput_calls={throughput_calls}", f"--throughput_batch={SERVING_BATCH}",
            f"--repeats={sizes.repeats}"]
    if settings.data_dir:
        args.append(f"--data_dir={settings.data_dir}")
    seconds = common.run_module("benchmarks.tf1_baseline", args, "TF1 baseline")
    return {
        "tf1_train": [sizes.tf1_steps * settings.batch_size / s
                      for s in seconds["train_seconds"]],
        "tf1_latency": [latency_calls / s for s in seconds["latency_seconds"]],
        "tf1_throughput": [throughput_calls * SERVING_BATCH / s
                           for s in seconds["throughput_seconds"]],
    }


def model_in_subprocess(name: str, settings: Settings, train_only: bool = False) -> dict:
    """Every raw measurement of one model (or its training only), taken in a fresh process:
    threads per op are set per model, and only before TensorFlow starts. Its progress lines
    show as they come; the training loop's own (`--verbosity=-1`) do not."""
    args = [f"--model={name}", f"--settings={common.settings_json(settings)}",
            "--verbosity=-1", *(["--train_only"] if train_only else [])]
    return common.run_module("benchmarks.model_worker", args, f"measuring {name}",
                             show_progress=True)


def interleaved_rounds(settings: Settings) -> list[dict]:
    """The TF1 baseline's training, then the default MLP's and its pipeline alone, each in a
    fresh process, round after round: a ratio within a round compares the two under the same
    load of the machine."""
    rounds = []
    for index in range(settings.sizes.rounds):
        log(f"MLP against TF1, round {index + 1} of {settings.sizes.rounds}")
        tf1 = tf1_baseline(settings, inference=False)["tf1_train"]
        mlp = model_in_subprocess("mlp", settings, train_only=True)
        rounds.append({"tf1_train": tf1, "mlp_train": mlp["train"],
                       "mlp_first_epoch": mlp["first_epoch"], "pipeline": mlp["pipeline"]})
    return rounds


def machine() -> dict:
    """What the numbers were measured on, and how busy it was."""
    cpu_model = distribute.cpu_info("model name") or platform.processor() or "unknown"
    return {"cpu_model": cpu_model, "cores": os.cpu_count(), "platform": platform.platform(),
            "gpus": len(tf.config.list_physical_devices("GPU")), "niceness": os.nice(0)}


def versions() -> dict:
    """The versions of what the figures depend on."""
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__}


def measure(settings: Settings) -> dict:
    """Runs every section of the benchmark; the raw rates, and where and when they were
    taken."""
    sizes = settings.sizes
    load_start = os.getloadavg()[0]
    arrays = data.load_arrays(settings.dataset, settings.data_dir, sizes.max_examples,
                              settings.seed)
    log(f"Data: {arrays.source}. Matmul peak and TF1 baseline (start)")
    peak_start = timing.matmul_peak(sizes.matmul_size, sizes.matmul_chain, sizes.repeats)
    tf1_start = tf1_baseline(settings)
    rounds = interleaved_rounds(settings) if "mlp" in settings.models else []
    models = {name: model_in_subprocess(name, settings) for name in settings.models}
    log("Input pipeline alone")
    num_train = len(arrays.x_train) - sizes.validation_size
    pipelines = {}
    for name, dataset in timing.pipeline_variants(settings, arrays).items():
        first, steady = timing.pipeline_rates(dataset, num_train, sizes.repeats)
        pipelines[name] = {"first_pass": first, "steady": steady}
    log("Matmul peak and TF1 baseline (end)")
    peak_end = timing.matmul_peak(sizes.matmul_size, sizes.matmul_chain, sizes.repeats)
    tf1_end = tf1_baseline(settings)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(), "data_source": arrays.source,
        "examples_per_pass": num_train,
        "peak": {"start": peak_start, "end": peak_end},
        "tf1": {"start": tf1_start, "end": tf1_end},
        "rounds": rounds, "models": models, "pipelines": pipelines,
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
    }
