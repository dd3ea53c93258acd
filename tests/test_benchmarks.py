"""The benchmark runs at tiny sizes and writes well-formed results; speed itself is not tested."""

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from keras_tutorial import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # benchmarks/ sits beside the installed package, not inside it.
from benchmarks import flops  # noqa: E402
SECTIONS = {"command", "date", "machine", "versions", "settings", "peak", "baseline", "models",
            "pipeline", "targets", "noise", "interleaved"}
MODEL_FIGURES = ("train", "first_epoch", "synthetic", "serve_latency", "serve_throughput")
PROSE = "# Benchmarks\n\nProse that a rerun keeps.\n\n"
OLD_SECTION = ("<!-- results:begin (written by python -m benchmarks.run) -->\nold\n"
               "<!-- results:end -->")


def _runner(*flags, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *flags], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run on synthetic data (no files needed) with one cheap compile variant."""
    out = tmp_path_factory.mktemp("benchmark")
    with open(out / "README.md", "w") as f:
        f.write(PROSE + OLD_SECTION + "\n\nMore prose.\n")
    result = _runner("--tiny", "--dataset=synthetic", "--models=mlp",
                     "--steps_per_execution=2", "--jit_compile=false",
                     f"--output={out / 'results.json'}", f"--readme={out / 'README.md'}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    with open(out / "README.md") as f:
        readme = f.read()
    return results, readme


def _figures(node):
    """Every figure (a dict with examples_per_sec) anywhere in the results."""
    if isinstance(node, dict):
        if "examples_per_sec" in node:
            yield node
        for value in node.values():
            yield from _figures(value)
    elif isinstance(node, list):
        for value in node:
            yield from _figures(value)


@pytest.mark.slow
def test_every_section_is_present(tiny_run):
    results, _ = tiny_run
    assert SECTIONS <= set(results)
    assert set(results["baseline"]) == {"tf1_train", "tf1_latency", "tf1_throughput"}
    assert set(results["models"]) == {"mlp"}
    mlp = results["models"]["mlp"]
    assert all(mlp[name]["examples_per_sec"] > 0 for name in MODEL_FIGURES)
    assert [(v["steps_per_execution"], v["jit_compile"]) for v in mlp["variants"]] == [(2, False)]
    assert list(results["pipeline"]["alternatives"]) == [
        "Pipelines.train (cache, shuffle, batch, prefetch; for fit)"]
    assert results["settings"]["tiny"] is True


@pytest.mark.slow
def test_figures_are_positive_and_ratios_match_the_raw_numbers(tiny_run):
    results, _ = tiny_run
    peak = results["peak"]["gflops"]
    assert peak > 0 and peak == max(results["peak"]["repeats"])  # The fastest repeat.
    figures = list(_figures(results))
    assert len(figures) >= 13
    for fig in figures:
        rate = fig["examples_per_sec"]
        assert all(r > 0 and math.isfinite(r) for r in fig["repeats"])
        assert fig["min"] <= rate <= fig["max"]
        baseline = results["baseline"][fig["baseline"]]["examples_per_sec"]
        assert fig["vs_tf1"] == pytest.approx(rate / baseline)
        if fig["flops_per_example"] is None:
            assert fig["peak_fraction"] is None
        else:
            assert fig["gflops"] == pytest.approx(rate * fig["flops_per_example"] / 1e9)
            assert fig["peak_fraction"] == pytest.approx(fig["gflops"] / peak)


@pytest.mark.slow
def test_flops_and_targets_follow_from_the_figures(tiny_run):
    results, _ = tiny_run
    mlp = results["models"]["mlp"]
    assert mlp["flops_per_example"]["forward"] == 2 * (784 * 256 + 256 * 10)
    assert mlp["train"]["flops_per_example"] == 3 * mlp["flops_per_example"]["forward"]
    assert mlp["first_epoch"]["vs_steady"] == pytest.approx(
        mlp["train"]["examples_per_sec"] / mlp["first_epoch"]["examples_per_sec"])
    assert mlp["serve_latency"]["latency_ms"] == pytest.approx(
        1000 / mlp["serve_latency"]["examples_per_sec"])
    values = {row["target"]: row for row in results["targets"]}
    rounds = results["interleaved"]["rounds"]
    assert len(rounds) == 1 and rounds[0]["tf1_train"] and rounds[0]["mlp_train"]
    assert rounds[0]["vs_tf1"] == pytest.approx(
        statistics.median(rounds[0]["mlp_train"]) / statistics.median(rounds[0]["tf1_train"]))
    assert values["MLP training vs TF1 (interleaved rounds, median)"]["value"] == (
        pytest.approx(rounds[0]["vs_tf1"]))
    assert values["MLP first epoch / steady epoch (interleaved rounds, median)"]["value"] == (
        pytest.approx(statistics.median(rounds[0]["mlp_train"]) / rounds[0]["mlp_first_epoch"]))
    assert values["pipeline / fastest model, the MLP (interleaved rounds, median)"]["value"] == (
        pytest.approx(statistics.median(rounds[0]["pipeline"])
                      / statistics.median(rounds[0]["mlp_train"])))
    assert results["pipeline"]["fastest_model"] == "mlp"
    assert results["pipeline"]["vs_fastest_model"] == pytest.approx(
        results["pipeline"]["train"]["examples_per_sec"] / mlp["train"]["examples_per_sec"])
    for row in results["targets"]:
        met = (row["value"] >= row["threshold"] if row["comparison"] == ">="
               else row["value"] <= row["threshold"])
        assert row["met"] is met


@pytest.mark.slow
def test_readme_section_is_replaced_and_prose_kept(tiny_run):
    results, readme = tiny_run
    assert readme.startswith(PROSE) and readme.endswith("\n\nMore prose.\n")
    assert readme.count("<!-- results:begin") == 1 and "\nold\n" not in readme
    assert f"`{results['command']}`" in readme
    assert "| target | measured | goal | met |" in readme
    assert "| round | TF1 training, examples/s |" in readme


@pytest.mark.parametrize("name, macs", [
    ("mlp", 784 * 256 + 256 * 10),
    ("cnn", 26 * 26 * 9 * 32 + 11 * 11 * 9 * 32 * 64 + 3 * 3 * 9 * 64 * 128 + 1152 * 128
     + 128 * 10),
    ("lstm", 28 * 4 * 128 * (28 + 128) + 128 * 10),
])
def test_flops_counts_multiply_adds_of_dense_conv_and_lstm(name, macs):
    assert flops.forward_flops(models.build(name)) == 2 * macs


def test_serving_counts_two_passes_where_the_model_reads_mirrors():
    plain, averaging = models.build("cnn"), models.build("cnn", average_mirrors=True)
    assert flops.forward_flops(averaging) == flops.forward_flops(plain)
    assert flops.serving_flops(averaging) == 2 * flops.serving_flops(plain)


def test_bad_flag_is_one_line_and_non_zero_exit():
    result = _runner("--models=resnet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --models must name some of mlp,cnn,lstm, got resnet")
    assert "Traceback" not in result.stderr
