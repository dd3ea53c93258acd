"""Renders benchmark results as markdown, between two markers in a README.

Only the text between the markers is rewritten, so the prose around it (what the figures
mean, what was concluded from them) survives a rerun.
"""

from __future__ import annotations

import os
import statistics

BEGIN = "<!-- results:begin (written by python -m benchmarks.run) -->"
END = "<!-- results:end -->"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _range(fig: dict) -> str:
    if len(fig["repeats"]) < 2:
        return "one run"
    return f"{_rate(fig['min'])}–{_rate(fig['max'])} ({100 * fig['spread']:.0f}%)"


def _table(columns: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """A markdown table; `align` has one letter per column, l (text) or r (numbers)."""
    rule = {"l": "---", "r": "---:"}
    return ["| " + " | ".join(columns) + " |",
            "|" + "|".join(rule[a] for a in align) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _figure_row(label: str, what: str, fig: dict) -> list[str]:
    return [label, what, _rate(fig["examples_per_sec"]), _range(fig), _ratio(fig["vs_tf1"]),
            _share(fig["peak_fraction"])]


def header(results: dict) -> list[str]:
    """Where, when, how and how noisily the results were measured."""
    machine, versions, noise = results["machine"], results["versions"], results["noise"]
    tiny = ["**Tiny sizes (`--tiny`): these numbers only show that the runner works.**", ""]
    return (tiny if results["settings"]["tiny"] else []) + [
        f"Command: `{results['command']}` ({results['date']}).",
        "",
        f"Machine: {machine['cores']} cores, {machine['cpu_model']}, {machine['gpus']} GPUs, "
        f"{machine['platform']}; process niceness {machine['niceness']}. Versions: Python "
        f"{versions['python']}, TensorFlow {versions['tensorflow']}, Keras {versions['keras']}, "
        f"NumPy {versions['numpy']}. Data: {results['settings']['data_source']}, batch "
        f"{results['settings']['batch_size']}, {results['settings']['repeats']} timed repeats "
        "per figure.",
        "",
        f"Noise: the relative spread (max - min) / median of a figure's repeats was "
        f"{100 * noise['median_spread']:.0f}% at the median and {100 * noise['max_spread']:.0f}% "
        f"at worst; the matmul peak at the end of the run was {noise['peak_end_vs_start']:.2f}x "
        f"its value at the start, the TF1 baseline {noise['tf1_end_vs_start']:.2f}x; the load "
        f"average was {noise['load_average_start']:.2f} at the start and "
        f"{noise['load_average_end']:.2f} at the end (the machine is shared).",
    ]


def figures_table(results: dict) -> list[str]:
    """Every headline figure: examples/s, noise, ratio to TF1, fraction of the peak."""
    peak, baseline = results["peak"], results["baseline"]
    rows = [
        _figure_row("TF1 MLP", "training (feed_dict)", baseline["tf1_train"]),
        _figure_row("TF1 MLP", "inference, batch 1", baseline["tf1_latency"]),
        _figure_row("TF1 MLP", f"inference, batch {results['settings']['serving_batch']}",
                    baseline["tf1_throughput"]),
    ]
    for name, model in results["models"].items():
        latency_ms = model["serve_latency"]["latency_ms"]
        rows += [
            _figure_row(name, "training, steady epochs", model["train"]),
            _figure_row(name, "training, first epoch", model["first_epoch"]),
            _figure_row(name, "training on one repeated batch (no pipeline)",
                        model["synthetic"]),
            _figure_row(name, f"SavedModel, batch 1 ({latency_ms:.2f} ms)",
                        model["serve_latency"]),
            _figure_row(name, f"SavedModel, batch {results['settings']['serving_batch']}",
                        model["serve_throughput"]),
        ]
    pipeline = results["pipeline"]
    rows += [_figure_row("pipeline", "alone, steady passes", pipeline["train"]),
             _figure_row("pipeline", "alone, first pass",
                         pipeline["first_pass"])]
    return [
        f"Matmul peak: **{peak['gflops']:.0f} GFLOP/s** float32 (the fastest of "
        f"{len(peak['repeats'])} repeats; median {peak['median']:.0f}, slowest "
        f"{peak['min']:.0f}). TF1 figures are the "
        "baseline of the ratios; training rows compare with TF1 training, serving rows with "
        "TF1 inference at the same batch size.",
        "",
        *_table(["model", "figure", "examples/s (median)", "min–max (spread)", "vs TF1",
                 "of peak"], "llrrrr", rows)]


def interleaved_table(results: dict) -> list[str]:
    """The default MLP against TF1, round by round, each round two fresh processes."""
    interleaved = results["interleaved"]
    rows = [[str(index), _rate(statistics.median(r["tf1_train"])),
             _rate(statistics.median(r["mlp_train"])), _ratio(r["vs_tf1"]),
             _ratio(r["first_vs_steady"]), _rate(statistics.median(r["pipeline"])),
             _ratio(r["pipeline_vs_mlp"])]
            for index, r in enumerate(interleaved["rounds"], 1)]
    if rows:
        rows.append(["**median**", "", "", f"**{_ratio(interleaved['vs_tf1']['median'])}**",
                     f"**{_ratio(interleaved['first_vs_steady']['median'])}**", "",
                     f"**{_ratio(interleaved['pipeline_vs_mlp']['median'])}**"])
    return _table(["round", "TF1 training, examples/s", "MLP training (steady), examples/s",
                   "MLP vs TF1", "MLP first epoch / steady", "its pipeline alone, examples/s",
                   "pipeline / MLP"], "lrrrrrr", rows)


def targets_table(results: dict) -> list[str]:
    """The speed targets (`goals.SPEED_TARGETS`), each measured, met or not."""
    return _table(["target", "measured", "goal", "met"], "lrrl", [
        [row["target"], f"{row['value']:.2f}", f"{row['comparison']} {row['threshold']:g}",
         "met" if row["met"] else "**not met**"] for row in results["targets"]])


def first_epoch_table(results: dict) -> list[str]:
    """Why the first epoch is slower: the cache filling, and compiling (XLA) or tracing."""
    pipeline = results["pipeline"]
    cache_fill = pipeline["examples_per_pass"] * (
        1 / pipeline["first_pass"]["examples_per_sec"] - 1 / pipeline["train"]["examples_per_sec"])
    rows = []
    for name, model in results["models"].items():
        first = model["first_epoch"]
        rows.append([name, f"{first['trace_seconds']:.2f} s", f"{first['seconds']:.2f} s",
                     f"{first['steady_seconds']:.2f} s", f"{first['vs_steady']:.2f}x",
                     f"{first['seconds'] - first['steady_seconds']:.2f} s", f"{cache_fill:.2f} s",
                     f"{model['synthetic_first_chunk_extra_seconds']:.2f} s"])
    return _table(["model", "tracing, before the first epoch", "first epoch", "steady epoch",
                   "ratio", "extra time of the first epoch",
                   "of which: cache filling (pipeline alone)",
                   "Keras fit's first chunk on one repeated batch: extra time"], "lrrrrrrr", rows)


def variants_table(results: dict) -> list[str]:
    """Compile variants, each a steady rate over chunks of steps of the repeated pipeline."""
    rows = []
    for name, model in results["models"].items():
        defaults = model["defaults"]
        reference = [v["examples_per_sec"] for v in model["variants"]
                     if v["steps_per_execution"] == defaults["steps_per_execution"]
                     and v["jit_compile"] == defaults["jit_compile"]]
        for v in model["variants"]:
            relative = v["examples_per_sec"] / reference[0] if reference else None
            rows.append([name, str(v["steps_per_execution"]), str(v["jit_compile"]),
                         _rate(v["examples_per_sec"]), _range(v), _ratio(v["vs_tf1"]),
                         _share(v["peak_fraction"]), _ratio(relative)])
    return _table(["model", "steps_per_execution", "jit_compile", "examples/s (median)",
                   "min–max (spread)", "vs TF1", "of peak", "vs train.py's default"],
                  "lrlrrrrr", rows)


def pipeline_table(results: dict) -> list[str]:
    """The loop's pipeline alone and the alternatives: first and steady passes."""
    pipeline = results["pipeline"]
    rows = {"Pipelines.epoch (what the training loop reads)": {
                "first_pass": pipeline["first_pass"], "steady": pipeline["train"]},
            **pipeline["alternatives"]}
    return _table(["training pipeline", "first pass, examples/s",
                   "steady, examples/s (min–max, spread)"], "lrr", [
        [name, _rate(figs["first_pass"]["examples_per_sec"]),
         f"{_rate(figs['steady']['examples_per_sec'])} ({_range(figs['steady'])})"]
        for name, figs in rows.items()])


def render(results: dict) -> str:
    """The results section: header, figures, targets, first epoch, variants, pipelines."""
    sections = [
        header(results),
        ["### Figures", ""] + figures_table(results),
        ["### The MLP against TF1, interleaved", "",
         "The figures above measure TF1 at the start and at the end of the run and each model "
         "once in between; on a shared machine whose speed drifts, that ratio carries the "
         "drift. Here each round runs the TF1 training (median of its repeats), then the "
         "default MLP loop (median of its steady epochs, and its first epoch), then full passes "
         "over the MLP's pipeline alone in the same process, each run in a fresh process, one "
         "right after the other; the targets use the median over rounds.", ""]
        + interleaved_table(results),
        ["### Speed targets", ""] + targets_table(results),
        ["### First epoch", "",
         "The training loop traces its step before the first epoch's clock starts (first "
         "column, not part of the epoch). What else the first epoch spends, estimated from two "
         "other measurements: the pipeline's first pass against its later ones, and Keras "
         "`fit`'s first chunk of training on one repeated batch against later chunks (tracing "
         "included there). XLA compiles at the first step, inside the first epoch.", ""]
        + first_epoch_table(results),
        ["### Loop variants", "",
         "The training loop (`loop.Trainer`) with other `steps_per_execution` and `jit_compile` "
         f"values; steady examples/s over epochs cut to {results['settings']['chunk_steps']} "
         "steps, repeated.", ""]
        + variants_table(results),
        ["### Input pipeline alternatives", "",
         "Full passes over the training split, counted inside TensorFlow with "
         "`Dataset.reduce`.", ""] + pipeline_table(results),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections)


def update_readme(path: str, results: dict) -> None:
    """Replaces the results section of `path` (appending one if there is none)."""
    replace_section(path, BEGIN, END, render(results))


def replace_section(path: str, begin: str, end: str, body: str, after: str | None = None,
                    ) -> None:
    """Rewrites the text between the `begin` and `end` markers of `path`; where there are none,
    puts the section just after the marker `after` if the file has it, else at the end."""
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    section = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    elif after is not None and after in text:
        at = text.index(after) + len(after)
        text = text[:at] + "\n\n" + section + "\n" + text[at:]
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + section + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
