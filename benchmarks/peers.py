"""This project against what a user would pick instead, PyTorch and stock Keras 3 on JAX, on
the same three networks, data, batch and optimizer.

Every run is a fresh process of one framework and one model (`peer_project.py`,
`peer_torch.py`, `peer_keras_jax.py`) on the same arrays, saved once to an .npz. Rounds
alternate the frameworks model by model, so that a ratio within a round compares runs
minutes apart on a shared machine. A run trains until its test accuracy reaches the model's
target (and at least `min_epochs`), then times batch-1 serving. A peer that is not installed
is skipped with one line. `python -m benchmarks.peers` runs the comparison alone, with the
data flags of `benchmarks.run`; `benchmarks.run` calls `compare` last. The README section:
`peers_report.py`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import statistics
import tempfile
import time

import numpy as np
from absl import flags

from benchmarks import common, goals, peers_report
from benchmarks.common import Settings, log
from keras_tutorial import cli
from keras_tutorial.config import TrainConfig

RUN_TIMEOUT_S = 3600


@dataclasses.dataclass(frozen=True)
class Runner:
    """One framework as the comparison runs it."""

    label: str
    module: str
    variant: str | None  # Passed as --variant.
    requires: str | None  # A module that must be importable, else the runner is skipped.
    models: tuple[str, ...] = ("mlp", "cnn", "lstm")  # The models it is compared on.


RUNNERS = (
    Runner("this project", "benchmarks.peer_project", None, None),
    Runner("PyTorch eager", "benchmarks.peer_torch", "eager", "torch"),
    # The CNN only: torch.compile did not pay for the other two (benchmarks/README.md).
    Runner("PyTorch torch.compile", "benchmarks.peer_torch", "compile", "torch", ("cnn",)),
    Runner("Keras 3 on JAX", "benchmarks.peer_keras_jax", None, "jax"),
)


@dataclasses.dataclass(frozen=True)
class PeerSizes:
    """How much work the comparison does."""

    rounds: int
    min_epochs: int  # A first epoch and at least one steady epoch.
    max_epochs: int | None  # None: the model's own epochs (its cosine schedule).
    latency_calls: int
    latency_repeats: int
    deadline_factor: float  # A peer stops past this many times the project's time to accuracy.


FULL = PeerSizes(rounds=2, min_epochs=2, max_epochs=None, latency_calls=200, latency_repeats=3,
                 deadline_factor=2.0)
TINY = PeerSizes(rounds=1, min_epochs=2, max_epochs=2, latency_calls=3, latency_repeats=2,
                 deadline_factor=2.0)


def missing(runner: Runner) -> str | None:
    """Why a runner cannot run here, or None."""
    if runner.requires and importlib.util.find_spec(runner.requires) is None:
        return f"{runner.requires} is not installed (pip install -e '.[bench]')"
    return None


def task_flags(name: str, dataset: str, batch_size: int, seed: int, validation_size: int,
               sizes: PeerSizes) -> list[str]:
    """The runners' shared flags for one model: the project's own defaults for it."""
    config = TrainConfig(model=name, dataset=dataset, batch_size=batch_size, seed=seed).resolved()
    target = goals.ACCURACY_TARGETS.get(dataset, {}).get(name)
    args = [f"--model={name}", f"--batch_size={batch_size}", f"--seed={seed}",
            f"--validation_size={validation_size}", f"--learning_rate={config.learning_rate}",
            f"--schedule_epochs={sizes.max_epochs or config.epochs}",
            f"--min_epochs={sizes.min_epochs}", f"--latency_calls={sizes.latency_calls}",
            f"--latency_repeats={sizes.latency_repeats}"]
    if config.augment == "flip":
        args.append("--flip")
    if target is not None and sizes.max_epochs is None:
        args.append(f"--target={target}")
    return args


def run_once(runner: Runner, task: list[str], deadline_s: float | None) -> dict:
    """One fresh process of `runner` on a task (`task_flags`); its JSON line, with the
    machine's load beside it."""
    args = list(task)
    if runner.variant:
        args.append(f"--variant={runner.variant}")
    if deadline_s is not None:
        args.append(f"--deadline_s={deadline_s:.1f}")
    load = os.getloadavg()[0]
    args.append(f"--started_at={time.time()!r}")
    run = common.run_module(runner.module, args, runner.label, timeout_s=RUN_TIMEOUT_S)
    return {**run, "load_average": load}


def rates(run: dict) -> tuple[float, list[float]]:
    """Examples/s of the first epoch (compiling included) and of each later epoch."""
    per_epoch = [epoch["examples"] / epoch["seconds"] for epoch in run["epochs"]]
    return per_epoch[0], per_epoch[1:]


def reached_seconds(run: dict) -> float | None:
    """Seconds to the accuracy target, or None where the run did not reach it."""
    return run["time_to_accuracy"]["seconds"] if run["time_to_accuracy"] else None


def deadline(project_run: dict, sizes: PeerSizes) -> float | None:
    """When a peer stops trying: a multiple of the project's time to accuracy in this round."""
    if project_run["target"] is None:
        return None
    return sizes.deadline_factor * (reached_seconds(project_run) or project_run["elapsed_at_stop"])


def check_params(name: str, runs: dict[str, dict]) -> None:
    """Every framework's network has the project's trainable weights and moving statistics."""
    expected = runs[RUNNERS[0].label]["params"]
    for label, run in runs.items():
        if run["params"] != expected:
            raise RuntimeError(f"{name}: {label} has {run['params']} parameters, the project "
                               f"{expected}")
    log(f"  {name}: {expected['trainable']:,} trainable parameters and "
        f"{expected['non_trainable']:,} moving statistics in every framework")


def one_round(names: tuple[str, ...], tasks: dict[str, list[str]], runners: list[Runner],
              sizes: PeerSizes) -> dict[str, dict[str, dict]]:
    """Each model, each framework once, the project first (its time sets the deadline)."""
    results = {}
    for name in names:
        runs = {}
        for runner in [runner for runner in runners if name in runner.models]:
            cutoff = deadline(runs[RUNNERS[0].label], sizes) if runs else None
            runs[runner.label] = run = run_once(runner, tasks[name], cutoff)
            first, steady = rates(run)
            log(f"  {name}, {runner.label}: first epoch {first:,.0f}, steady "
                f"{statistics.median(steady) if steady else float('nan'):,.0f} examples/s, "
                f"time to accuracy {reached_seconds(run) or float('nan'):.1f} s "
                f"({len(run['epochs'])} epochs), serving {min(run['latency_ms']):.3f} ms")
        check_params(name, runs)
        results[name] = runs
    return results


def spread(values: list[float]) -> dict:
    """The median over rounds, how far the rounds strayed from it, and the rounds' values."""
    return {**common.spread(values), "values": values}


def summarize(rounds: list[dict[str, dict]], name: str, labels: list[str]) -> dict:
    """Per framework: rates, time to accuracy and latency over rounds; the ratios of
    `goals.PEER_GOALS` within each round, then their median."""
    figures = {}
    for label in labels:
        runs = [r[name][label] for r in rounds]
        steady = [statistics.median(rates(run)[1]) for run in runs]
        reached = [reached_seconds(run) for run in runs]
        figures[label] = {
            "steady": spread(steady), "first_epoch": spread([rates(run)[0] for run in runs]),
            "time_to_accuracy": spread([s for s in reached if s is not None]) if all(
                s is not None for s in reached) else None,
            "stopped_at": [run["elapsed_at_stop"] for run in runs],
            "epochs_to_accuracy": [run["time_to_accuracy"]["epochs"] if run["time_to_accuracy"]
                                   else None for run in runs],
            "startup_seconds": spread([run["startup_seconds"] for run in runs]),
            "latency_ms": spread([statistics.median(run["latency_ms"]) for run in runs]),
            "version": runs[0].get("version"), "threads": runs[0].get("threads"),
            "load_average": [run["load_average"] for run in runs]}
    project, peers = labels[0], labels[1:]
    ratios = {}
    if peers:
        train_ratios = [statistics.median(rates(r[name][project])[1]) / max(
            statistics.median(rates(r[name][peer])[1]) for peer in peers) for r in rounds]
        ratios["training_vs_fastest_peer"] = spread(train_ratios)
        tta = [tta_ratio(r[name], project, peers) for r in rounds]
        ratios["time_to_accuracy_best_peer_vs_project"] = (
            spread(tta) if all(value is not None for value in tta) else None)
    return {"figures": figures, "goals": ratios,
            "params": rounds[0][name][project]["params"], "target": rounds[0][name][project][
                "target"]}


def tta_ratio(runs: dict[str, dict], project: str, peers: list[str]) -> float | None:
    """The best peer's time to accuracy over the project's (>= 1: the project is no slower).
    A peer that stopped at its deadline without the target took at least that long."""
    own = reached_seconds(runs[project])
    if own is None:
        return None
    best = min(reached_seconds(runs[peer]) or runs[peer]["elapsed_at_stop"] for peer in peers)
    return best / own


def compare(settings: Settings) -> dict:
    """Measures every available framework on `settings.models`; the raw runs and a summary."""
    from keras_tutorial import data  # TensorFlow: `main` checks its flags first.

    sizes = TINY if settings.tiny else FULL
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runners = [runner for runner in RUNNERS if not missing(runner)]
    skipped = {runner.label: missing(runner) for runner in RUNNERS if missing(runner)}
    for label, reason in skipped.items():
        log(f"Peers: {label} skipped: {reason}")
    arrays = data.load_arrays(settings.dataset, settings.data_dir, settings.sizes.max_examples,
                              settings.seed)
    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "arrays.npz")
        np.savez(path, x_train=arrays.x_train, y_train=arrays.y_train, x_test=arrays.x_test,
                 y_test=arrays.y_test)
        tasks = {name: [f"--data={path}", *task_flags(
            name, settings.dataset, settings.batch_size, settings.seed,
            settings.sizes.validation_size, sizes)] for name in settings.models}
        for index in range(sizes.rounds):
            log(f"Peers, round {index + 1} of {sizes.rounds}: "
                f"{', '.join(runner.label for runner in runners)}")
            rounds.append(one_round(settings.models, tasks, runners, sizes))
    labels = [runner.label for runner in runners]
    results = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "sizes": dataclasses.asdict(sizes), "data_source": arrays.source,
               "skipped": skipped, "frameworks": labels, "rounds": rounds,
               "models": {name: summarize(rounds, name, list(rounds[0][name]))
                          for name in settings.models}}
    log(f"Peers:\n{peers_report.render(results)}")
    return results


def define_flags() -> None:
    common.define_flags(output=os.path.join(common.HERE, "peers.json"))


def main(argv: list[str]) -> None:
    """The comparison alone, written to --output and the peers section of --readme."""
    cli.no_arguments(argv)
    settings = common.settings_from(flags.FLAGS)
    results = compare(settings)
    common.write_json(settings.output, results)
    peers_report.update_readme(settings.readme, results)
    log(f"Wrote {settings.output} and {settings.readme}")


if __name__ == "__main__":
    cli.run(main, define_flags)
