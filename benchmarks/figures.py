"""Turns a run's raw rates (`orchestrate.measure`) into the results that results.json holds
and `report.py` renders: each figure the median of its repeats with their spread, a ratio to
the TF1 baseline of its kind and, where it does arithmetic, a fraction of the matmul peak;
then the speed targets (`goals.py`) and how noisy the run was.
"""

from __future__ import annotations

import dataclasses
import statistics

from benchmarks import flops, goals
from benchmarks.common import SERVING_BATCH, Settings, spread
from benchmarks.timing import DEFAULT_PIPELINE


def stats(values: list[float]) -> dict:
    """Median of repeats, how far the repeats strayed from it, and the repeats."""
    return {**spread(values), "repeats": values}


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


def model_figures(raw: dict, baselines: dict[str, float], peak: float) -> dict:
    """One model's raw rates as figures; training counts 3x the forward FLOPs."""
    forward, serving = raw["forward_flops"], raw["serving_flops"]
    training = flops.TRAINING_TO_FORWARD * forward

    def train_figure(rates: list[float]) -> dict:
        return figure(rates, "tf1_train", baselines, training, peak)

    first, steady, synthetic = (train_figure([raw["first_epoch"]]), train_figure(raw["train"]),
                                train_figure(raw["synthetic"]))
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
        "serve_latency": {**latency, "latency_ms": 1000 / latency["examples_per_sec"]},
        "serve_throughput": figure(raw["serve_throughput"], "tf1_throughput", baselines,
                                   serving, peak),
        "variants": [{"steps_per_execution": v["steps_per_execution"],
                      "jit_compile": v["jit_compile"], **train_figure(v["rates"])}
                     for v in raw["variants"]],
    }


def interleaved(rounds: list[dict]) -> dict:
    """Each round with its ratios (within the round), and their median over the rounds."""
    with_ratios = []
    for r in rounds:
        mlp = statistics.median(r["mlp_train"])
        with_ratios.append({**r, "vs_tf1": mlp / statistics.median(r["tf1_train"]),
                            "first_vs_steady": mlp / r["mlp_first_epoch"],
                            "pipeline_vs_mlp": statistics.median(r["pipeline"]) / mlp})
    ratios = ("vs_tf1", "first_vs_steady", "pipeline_vs_mlp")
    return {"rounds": with_ratios,
            **({key: stats([r[key] for r in with_ratios]) for key in ratios} if rounds else {})}


def pipeline(raw: dict, models: dict, baselines: dict[str, float], peak: float) -> dict:
    """The loop's pipeline alone against the fastest model, and the alternatives."""
    passes = {name: {"first_pass": figure([rates["first_pass"]], "tf1_train", baselines, None,
                                          peak),
                     "steady": figure(rates["steady"], "tf1_train", baselines, None, peak)}
              for name, rates in raw["pipelines"].items()}
    default = passes.pop(DEFAULT_PIPELINE)
    fastest = max(models, key=lambda name: models[name]["train"]["examples_per_sec"])
    return {"examples_per_pass": raw["examples_per_pass"], "train": default["steady"],
            "first_pass": default["first_pass"], "fastest_model": fastest,
            "vs_fastest_model": (default["steady"]["examples_per_sec"]
                                 / models[fastest]["train"]["examples_per_sec"]),
            "alternatives": passes}


def all_spreads(results: dict) -> list[float]:
    """The relative spread (max - min) / median of every figure of more than one repeat."""
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


def results(raw: dict, settings: Settings, command: str) -> dict:
    """The results as written to JSON, from `orchestrate.measure`'s raw rates."""
    peak_start, peak_end = raw["peak"]["start"], raw["peak"]["end"]
    tf1_start, tf1_end = raw["tf1"]["start"], raw["tf1"]["end"]
    # A repeat slower than the fastest measures the machine's load, not its limit.
    peak = stats(peak_start + peak_end)
    peak_gflops = peak["max"]
    baseline_rates = {key: tf1_start[key] + tf1_end[key] for key in tf1_start}
    baselines = {key: statistics.median(rates) for key, rates in baseline_rates.items()}
    tf1_flops = flops.tutorial_mlp_forward_flops()
    tf1_flops_per_figure = {"tf1_train": flops.TRAINING_TO_FORWARD * tf1_flops,
                            "tf1_latency": tf1_flops, "tf1_throughput": tf1_flops}
    models = {name: model_figures(model, baselines, peak_gflops)
              for name, model in raw["models"].items()}
    results = {
        "command": command, "date": raw["date"], "machine": raw["machine"],
        "versions": raw["versions"],
        "settings": {"tiny": settings.tiny, "dataset": settings.dataset,
                     "data_source": raw["data_source"], "batch_size": settings.batch_size,
                     "seed": settings.seed, "serving_batch": SERVING_BATCH,
                     **dataclasses.asdict(settings.sizes)},
        "peak": {"gflops": peak_gflops, **peak, "start_median": statistics.median(peak_start),
                 "end_median": statistics.median(peak_end)},
        "baseline": {key: {**figure(rates, key, baselines, tf1_flops_per_figure[key],
                                    peak_gflops),
                           "start_median": statistics.median(tf1_start[key]),
                           "end_median": statistics.median(tf1_end[key])}
                     for key, rates in baseline_rates.items()},
        "models": models,
        "interleaved": interleaved(raw["rounds"]),
        "pipeline": pipeline(raw, models, baselines, peak_gflops),
    }
    results["targets"] = goals.speed_rows(results)
    spreads = all_spreads(results)
    load = raw["load_average"]
    results["noise"] = {
        "median_spread": statistics.median(spreads), "max_spread": max(spreads),
        "peak_end_vs_start": statistics.median(peak_end) / statistics.median(peak_start),
        "tf1_end_vs_start": statistics.median(tf1_end["tf1_train"]) / statistics.median(
            tf1_start["tf1_train"]),
        "load_average_start": load["start"], "load_average_end": load["end"]}
    return results
