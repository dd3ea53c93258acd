"""This project against what a user would pick instead, PyTorch and stock Keras 3 on JAX, on
the same three networks, data, batch and optimizer.

Every run is a fresh process of one framework and one model (`peer_project.py`,
`peer_torch.py`, `peer_keras_jax.py`) on the same arrays, saved once to an .npz. Rounds
alternate the frameworks model by model, so that a ratio within a round compares runs
minutes apart on a shared machine. A run trains until its test accuracy reaches the model's
target (and at least `min_epochs`), then times batch-1 serving. A peer that is not installed
is skipped with one line. `benchmarks.run` calls `compare` and `update_readme`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import report
from keras_tutorial import data
from keras_tutorial.config import TrainConfig

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN = "<!-- peers:begin (written by python -m benchmarks.run) -->"
END = "<!-- peers:end -->"
# Test accuracy each model must reach on Fashion-MNIST (benchmarks/README.md, Goals); other
# datasets have none.
TARGETS = {"fashion_mnist": {"mlp": 0.88, "cnn": 0.92, "lstm": 0.88}}
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
    # torch.compile did not pay for the MLP (0.80-0.93x of eager, same process, alternating)
    # nor the LSTM (0.97-1.06x: nn.LSTM stays one oneDNN kernel); measured for the CNN.
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


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def missing(runner: Runner) -> str | None:
    """Why a runner cannot run here, or None."""
    if runner.requires and importlib.util.find_spec(runner.requires) is None:
        return f"{runner.requires} is not installed (pip install -e '.[bench]')"
    return None


def _env() -> dict[str, str]:
    """This environment, with the repository on the path so that `-m benchmarks...` runs."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(HERE)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}


def task_flags(name: str, dataset: str, batch_size: int, seed: int, validation_size: int,
               sizes: PeerSizes) -> list[str]:
    """The runners' shared flags for one model: the project's own defaults for it."""
    config = TrainConfig(model=name, dataset=dataset, batch_size=batch_size, seed=seed).resolved()
    target = TARGETS.get(dataset, {}).get(name)
    flags = [f"--model={name}", f"--batch_size={batch_size}", f"--seed={seed}",
             f"--validation_size={validation_size}", f"--learning_rate={config.learning_rate}",
             f"--schedule_epochs={sizes.max_epochs or config.epochs}",
             f"--min_epochs={sizes.min_epochs}", f"--latency_calls={sizes.latency_calls}",
             f"--latency_repeats={sizes.latency_repeats}"]
    if config.augment == "flip":
        flags.append("--flip")
    if target is not None and sizes.max_epochs is None:
        flags.append(f"--target={target}")
    return flags


def run_once(runner: Runner, flags: list[str], deadline_s: float | None) -> dict:
    """One fresh process of `runner`; its JSON line, with the machine's load beside it."""
    command = [sys.executable, "-m", runner.module, *flags]
    if runner.variant:
        command.append(f"--variant={runner.variant}")
    if deadline_s is not None:
        command.append(f"--deadline_s={deadline_s:.1f}")
    load = os.getloadavg()[0]
    command.append(f"--started_at={time.time()!r}")
    result = subprocess.run(command, capture_output=True, text=True, env=_env(),
                            timeout=RUN_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{runner.label} failed (exit status {result.returncode}): "
                           f"{result.stderr.strip().splitlines()[-3:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "load_average": load}


def rates(run: dict) -> tuple[float, list[float]]:
    """Examples/s of the first epoch (compiling included) and of each later epoch."""
    per_epoch = [epoch["examples"] / epoch["seconds"] for epoch in run["epochs"]]
    return per_epoch[0], per_epoch[1:]


def reached_seconds(run: dict) -> float | None:
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


def one_round(names: tuple[str, ...], flags: dict[str, list[str]], runners: list[Runner],
              sizes: PeerSizes) -> dict[str, dict[str, dict]]:
    """Each model, each framework once, the project first (its time sets the deadline)."""
    results = {}
    for name in names:
        runs = {}
        for runner in [runner for runner in runners if name in runner.models]:
            cutoff = deadline(runs[RUNNERS[0].label], sizes) if runs else None
            runs[runner.label] = run = run_once(runner, flags[name], cutoff)
            first, steady = rates(run)
            log(f"  {name}, {runner.label}: first epoch {first:,.0f}, steady "
                f"{statistics.median(steady) if steady else float('nan'):,.0f} examples/s, "
                f"time to accuracy {reached_seconds(run) or float('nan'):.1f} s "
                f"({len(run['epochs'])} epochs), serving {min(run['latency_ms']):.3f} ms")
        check_params(name, runs)
        results[name] = runs
    return results


def spread(values: list[float]) -> dict:
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median if median else 0.0, "values": values}


def summarize(rounds: list[dict[str, dict]], name: str, labels: list[str]) -> dict:
    """Per framework: rates, time to accuracy and latency over rounds; the goals as ratios
    within each round, then their median."""
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
    goals = {}
    if peers:
        train_ratios = [statistics.median(rates(r[name][project])[1]) / max(
            statistics.median(rates(r[name][peer])[1]) for peer in peers) for r in rounds]
        goals["training_vs_fastest_peer"] = spread(train_ratios)
        tta = [tta_ratio(r[name], project, peers) for r in rounds]
        goals["time_to_accuracy_best_peer_vs_project"] = (
            spread(tta) if all(value is not None for value in tta) else None)
    return {"figures": figures, "goals": goals,
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


def compare(settings) -> dict:
    """Measures every available framework on `settings.models`; the raw runs and a summary.

    `settings` is `benchmarks.run.Settings`: dataset, data_dir, models, batch_size, seed,
    tiny and sizes (max_examples, validation_size) are read from it.
    """
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
        flags = {name: [f"--data={path}", *task_flags(
            name, settings.dataset, settings.batch_size, settings.seed,
            settings.sizes.validation_size, sizes)] for name in settings.models}
        for index in range(sizes.rounds):
            log(f"Peers, round {index + 1} of {sizes.rounds}: "
                f"{', '.join(runner.label for runner in runners)}")
            rounds.append(one_round(settings.models, flags, runners, sizes))
    labels = [runner.label for runner in runners]
    results = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "sizes": dataclasses.asdict(sizes), "data_source": arrays.source,
               "skipped": skipped, "frameworks": labels, "rounds": rounds,
               "models": {name: summarize(rounds, name, list(rounds[0][name]))
                          for name in settings.models}}
    log(f"Peers:\n{render(results)}")
    return results


# --- The README section ---------------------------------------------------------------------

def _range(fig: dict, fmt: str) -> str:
    if len(fig["values"]) < 2:
        return format(fig["median"], fmt)
    return (f"{format(fig['median'], fmt)} ({format(fig['min'], fmt)}–{format(fig['max'], fmt)}, "
            f"{100 * fig['spread']:.0f}%)")


def _tta(figures: dict, target: float | None) -> str:
    """Time to accuracy; where a round missed the target, the time it gave up (a bound)."""
    if target is None:
        return "—"
    if figures["time_to_accuracy"] is not None:
        epochs = "/".join(str(e) for e in figures["epochs_to_accuracy"])
        return f"{_range(figures['time_to_accuracy'], '.1f')} ({epochs} epochs)"
    return "not reached; stopped at " + ", ".join(f"{s:.0f}" for s in figures["stopped_at"])


def model_table(name: str, summary: dict) -> list[str]:
    figures, target = summary["figures"], summary["target"]
    project = next(iter(figures.values()))["steady"]["median"]
    what = f"time to {target} test accuracy, s" if target is not None else "time to accuracy"
    rows = [[label,
             _range(fig["steady"], ",.0f"), f"{fig['steady']['median'] / project:.2f}x",
             _range(fig["first_epoch"], ",.0f"), _tta(fig, target),
             _range(fig["startup_seconds"], ".1f"), _range(fig["latency_ms"], ".3f")]
            for label, fig in figures.items()]
    params = summary["params"]
    return [f"**{name.upper()}** ({params['trainable']:,} trainable parameters and "
            f"{params['non_trainable']:,} moving statistics in every framework)", "",
            "| framework | steady epochs, examples/s | vs this project | first epoch, "
            f"examples/s | {what} | start-up, s | batch-1 serving, ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def goals_table(results: dict) -> list[str]:
    """Issue 16's goals, each a ratio within a round, then the median over rounds."""
    rows = []
    for name, summary in results["models"].items():
        goals = summary["goals"]
        if not goals:
            continue
        train = goals["training_vs_fastest_peer"]
        rows.append([f"{name.upper()} training: this project / fastest peer",
                     ", ".join(f"{v:.2f}" for v in train["values"]), f"{train['median']:.2f}",
                     ">= 1.0", "met" if train["median"] >= 1.0 else "**not met**"])
        tta = goals["time_to_accuracy_best_peer_vs_project"]
        if tta is not None:
            rows.append([f"{name.upper()} time to accuracy: best peer / this project",
                         ", ".join(f"{v:.2f}" for v in tta["values"]), f"{tta['median']:.2f}",
                         ">= 1.0", "met" if tta["median"] >= 1.0 else "**not met**"])
    return ["| goal | per round | median | goal | met |", "|---|---:|---:|---:|---|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def render(results: dict) -> str:
    """The peers section: how it was run, one table per model, the goals."""
    sizes = results["sizes"]
    versions = "; ".join(f"{label}: {version}" for label, version in {
        label: fig["version"] for summary in results["models"].values()
        for label, fig in summary["figures"].items()}.items())
    lines = [
        f"Data: {results['data_source']}. {sizes['rounds']} rounds; in each, every model "
        "trained by each framework in a fresh process, this project first, one after the "
        f"other. A run trains until its test accuracy reaches the target (at least "
        f"{sizes['min_epochs']} epochs); a peer gives up at {sizes['deadline_factor']:g}x the "
        "project's time in its round. Figures are medians over rounds (min–max, spread); "
        "steady is the median of a run's epochs after the first; the first epoch includes "
        "tracing or compiling; time to accuracy runs from the process's start to the end of "
        "the epoch that reached the target, test evaluations excluded; serving is "
        f"{sizes['latency_calls']} batch-1 calls, {sizes['latency_repeats']} repeats. "
        f"Versions: {versions}. Run from {results['started']} to {results['finished']}; the "
        "load average (1 minute) before each run is in the JSON results.", ""]
    for label, reason in results["skipped"].items():
        lines += [f"Skipped: {label}: {reason}.", ""]
    for name, summary in results["models"].items():
        lines += model_table(name, summary) + [""]
    return "\n".join(lines + goals_table(results))


def update_readme(path: str, results: dict | None) -> None:
    """Rewrites the peers section of `path`, put after the results section if there is none."""
    if results is not None:
        report.replace_section(path, BEGIN, END, render(results), after=report.END)


def main(argv: list[str]) -> None:
    """`python -m benchmarks.peers [flags of benchmarks.run]`: the comparison alone, written
    to benchmarks/peers.json (or --output) and the peers section of --readme."""
    from benchmarks import run  # Imported here: run imports this module.

    settings = run.parse_settings([f"--output={os.path.join(HERE, 'peers.json')}", *argv])
    results = compare(settings)
    run.write_json(settings.output, results)
    update_readme(settings.readme, results)
    log(f"Wrote {settings.output} and {settings.readme}")


if __name__ == "__main__":
    main(sys.argv[1:])
