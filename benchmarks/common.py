"""What the benchmark commands share: a run's settings and the flags that set them, progress
lines, JSON output, and running a module of this directory in a fresh process.

Imports no TensorFlow, so that `benchmarks.run` and `benchmarks.peers` check their flags before
it loads. The flags are defined only by the command that parses them (`define_flags`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

from absl import flags

from keras_tutorial import config, files

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist.
SERVING_BATCH = 1024  # The batch of every throughput figure of serving.


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
    data_dir: str | None  # Absolute, so that a process started elsewhere finds it.
    models: tuple[str, ...]
    batch_size: int
    seed: int
    tiny: bool  # Tiny sizes (repeats may still be set on their own).
    sizes: Sizes
    output: str  # The JSON results.
    readme: str  # The markdown file whose results sections are rewritten.
    variants: tuple[tuple[int, bool], ...] = ()  # (steps_per_execution, jit_compile) pairs.


def define_flags(output: str) -> None:
    """The flags of `benchmarks.run` and `benchmarks.peers` alike; `output` is --output's
    default."""
    flags.DEFINE_enum("dataset", "fashion_mnist", config.DATASETS,
                      "Dataset to measure on; 'synthetic' needs no files.")
    flags.DEFINE_string("data_dir", None, "IDX files or mnist.npz (see keras_tutorial/data.py; "
                        f"default for fashion_mnist: {FASHION_MNIST_DIR}).")
    flags.DEFINE_list("models", list(config.MODELS), "Models to measure.")
    flags.register_validator(
        "models", lambda names: bool(names) and set(names) <= set(config.MODELS),
        message=f"--models must name some of {','.join(config.MODELS)}")
    flags.DEFINE_integer("batch_size", 128, "Examples per training step.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of the data, the weights and the shuffling.")
    flags.DEFINE_bool("tiny", False, "Tiny sizes: checks that everything runs, measures nothing.")
    flags.DEFINE_string("output", output, "Write the results as JSON here.")
    flags.DEFINE_string("readme", os.path.join(HERE, "README.md"),
                        "Markdown file whose results section is rewritten.")


def settings_from(values: flags.FlagValues, repeats: int | None = None,
                  variants: tuple[tuple[int, bool], ...] = ()) -> Settings:
    """The settings that `define_flags`'s flags give, with `repeats` (when set) in the sizes."""
    sizes = TINY if values.tiny else FULL
    if repeats:
        sizes = dataclasses.replace(sizes, repeats=repeats)
    data_dir = values.data_dir or (FASHION_MNIST_DIR if values.dataset == "fashion_mnist"
                                   else None)
    return Settings(dataset=values.dataset, data_dir=data_dir and os.path.abspath(data_dir),
                    models=tuple(values.models), batch_size=values.batch_size,
                    seed=values.seed, tiny=values.tiny, sizes=sizes, output=values.output,
                    readme=values.readme, variants=variants)


def settings_json(settings: Settings) -> str:
    """`settings` as one line of JSON, for a process that measures part of the run."""
    return json.dumps(dataclasses.asdict(settings))


def settings_from_json(text: str) -> Settings:
    """The inverse of `settings_json`."""
    fields = json.loads(text)
    return Settings(**{**fields, "models": tuple(fields["models"]),
                       "sizes": Sizes(**fields["sizes"]),
                       "variants": tuple(tuple(variant) for variant in fields["variants"])})


def log(message: str) -> None:
    """A progress line on standard error, timed."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict:
    """The median of repeated measurements and how far they strayed from it: (max - min) /
    median."""
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median if median else 0.0}


def write_json(path: str, content: dict) -> None:
    """Writes JSON atomically, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_json(path, content)


def subprocess_env() -> dict[str, str]:
    """This environment, with the repository on the path so that `-m benchmarks...` runs."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(HERE)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}


def run_module(module: str, args: list[str], what: str, show_progress: bool = False,
               timeout_s: float | None = None) -> dict:
    """Runs `python -m module args` in a fresh process; the JSON object on the last line of
    its standard output. Its standard error is shown as it comes if `show_progress`, else kept
    for the error that a failure raises."""
    result = subprocess.run([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                            stderr=None if show_progress else subprocess.PIPE, text=True,
                            env=subprocess_env(), timeout=timeout_s, check=False)
    if result.returncode != 0:
        why = "" if show_progress else f": {result.stderr.strip().splitlines()[-3:]}"
        raise RuntimeError(f"{what} failed (exit status {result.returncode}){why}")
    return json.loads(result.stdout.strip().splitlines()[-1])
