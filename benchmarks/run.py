"""Measures the project's speed against the TF1 tutorial and the machine's limit, in one run.

    python -m benchmarks.run            # full run: writes results.json and README.md here
    python -m benchmarks.run --tiny --dataset=synthetic --output=/tmp/r.json --readme=/tmp/r.md

Sections: the float32 matmul peak and the TF1 baseline (bracketing the run: measured at the
start and again at the end, then pooled); the default MLP and its pipeline alone against the
TF1 baseline in interleaved rounds (fresh processes, one right after the other); per model,
training through the loop that `experiment.run` drives (first epoch and steady epochs), training
with Keras `fit` on one repeated batch (the model's cost without any pipeline), loop variants
(`steps_per_execution`, XLA) and serving from an exported SavedModel; the input pipeline
alone, with alternatives; last, unless --nopeers, the same networks in PyTorch and Keras on
JAX (`peers.py`). Every figure is a median of repeats with its spread, a ratio to the TF1
baseline and, where it does arithmetic, a fraction of the peak. What is timed: `timing.py`;
in which process and order: `orchestrate.py`; the figures and goals: `figures.py`,
`goals.py`; the README sections: `report.py`, `peers_report.py`.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from benchmarks import common
from keras_tutorial import cli

JIT_VALUES = {"true": True, "false": False}


def define_flags() -> None:
    common.define_flags(output=os.path.join(common.HERE, "results.json"))
    flags.DEFINE_integer("repeats", None, "Timed repeats per figure (default: 3, or 2 with "
                         "--tiny).", lower_bound=1)
    flags.DEFINE_list("steps_per_execution", ["1", "4", "16"], "Compile variants of the loop "
                      "to compare (empty: none).")
    flags.register_validator(
        "steps_per_execution", lambda values: all(v.isdigit() and int(v) > 0 for v in values),
        message="--steps_per_execution values must be positive integers")
    flags.DEFINE_list("jit_compile", ["false", "true"], "Compile variants, crossed with "
                      "--steps_per_execution.")
    flags.register_validator(
        "jit_compile", lambda values: all(v.lower() in JIT_VALUES for v in values),
        message="--jit_compile values must be true or false")
    flags.DEFINE_bool("peers", True, "Also train the models in PyTorch and Keras on JAX "
                      "(peers.py); a framework that is not installed is skipped.")


def main(argv: list[str]) -> None:
    # TensorFlow, once the flags are good.
    from benchmarks import figures, orchestrate, peers, peers_report, report

    cli.no_arguments(argv)
    values = flags.FLAGS
    variants = tuple((int(steps), JIT_VALUES[jit.lower()])
                     for steps in values.steps_per_execution for jit in values.jit_compile)
    settings = common.settings_from(values, values.repeats, variants)
    command = " ".join(["python -m benchmarks.run", *sys.argv[1:]])
    results = figures.results(orchestrate.measure(settings), settings, command)
    if values.peers:
        results["peers"] = peers.compare(settings)
    common.write_json(settings.output, results)
    report.update_readme(settings.readme, results)
    if values.peers:
        peers_report.update_readme(settings.readme, results["peers"])
    common.log(f"Wrote {settings.output} and {settings.readme}")


if __name__ == "__main__":
    cli.run(main, define_flags)
