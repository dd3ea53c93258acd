"""Renders the peer comparison (`peers.compare`) as markdown: how it was run, one table per
model, the goals against the peers; written between its markers in a README, after the
results section (`report.py`).
"""

from __future__ import annotations

from benchmarks import goals, report

BEGIN = "<!-- peers:begin (written by python -m benchmarks.run) -->"
END = "<!-- peers:end -->"


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
    """One model: each framework's speed, time to accuracy, start-up and serving latency."""
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
    """`goals.PEER_GOALS`, each a ratio within a round, then the median over rounds."""
    rows = []
    for name, summary in results["models"].items():
        for key, measured in summary["goals"].items():
            if measured is None:
                continue
            goal = goals.PEER_GOALS[key]
            rows.append([f"{name.upper()} {goal.what}",
                         ", ".join(f"{v:.2f}" for v in measured["values"]),
                         f"{measured['median']:.2f}", f"{goal.comparison} {goal.threshold:.1f}",
                         "met" if goal.met(measured["median"]) else "**not met**"])
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


def update_readme(path: str, results: dict) -> None:
    """Rewrites the peers section of `path`, put after the results section if there is none."""
    report.replace_section(path, BEGIN, END, render(results), after=report.END)
