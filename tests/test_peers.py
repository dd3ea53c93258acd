"""The peer comparison: each framework builds the project's networks (same parameter counts),
a tiny run of each prints its one JSON line, and the harness's bookkeeping holds."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_tutorial import data, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # benchmarks/ sits beside the installed package, not inside it.
from benchmarks import common, peer_common, peers, peers_report  # noqa: E402

FLIPS = {"mlp": False, "cnn": True, "lstm": False}  # As the project trains them on Fashion-MNIST.


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _project_params(name: str) -> dict[str, int]:
    model = models.build(name, average_mirrors=FLIPS[name])
    return {"trainable": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
            "non_trainable": sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)}


def _runner_json(module: str, *flags: str) -> dict:
    result = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env=common.subprocess_env(), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _installed("torch"), reason="PyTorch is not installed (bench extra)")
@pytest.mark.parametrize("name", models.MODELS)
def test_torch_networks_have_the_projects_parameters(name):
    from benchmarks import peer_torch

    assert peer_torch.param_counts(peer_torch.build(name)) == _project_params(name)


@pytest.mark.skipif(not _installed("torch"), reason="PyTorch is not installed (bench extra)")
def test_torch_lstm_starts_as_keras_does():
    """One bias (the second frozen at zero) with the forget gate's at 1."""
    from benchmarks import peer_torch

    lstm = peer_torch.build("lstm").lstm
    assert not lstm.bias_hh_l0.requires_grad and not lstm.bias_hh_l0.any()
    assert lstm.bias_ih_l0[128:256].eq(1).all() and not lstm.bias_ih_l0[:128].any()


@pytest.mark.slow
@pytest.mark.skipif(not _installed("jax"), reason="JAX is not installed (bench extra)")
@pytest.mark.parametrize("name", models.MODELS)
def test_keras_jax_networks_have_the_projects_parameters(name):
    flags = [f"--model={name}", "--params_only"] + (["--flip"] if FLIPS[name] else [])
    assert _runner_json("benchmarks.peer_keras_jax", *flags)["params"] == _project_params(name)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A few synthetic examples, saved as the harness saves its arrays."""
    arrays = data.synthetic_arrays(384, 64, seed=0)
    path = tmp_path_factory.mktemp("peers") / "arrays.npz"
    np.savez(path, x_train=arrays.x_train, y_train=arrays.y_train, x_test=arrays.x_test,
             y_test=arrays.y_test)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("runner", peers.RUNNERS, ids=lambda runner: runner.label)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_tiny_run_of_each_framework_prints_its_figures(runner, name, tiny_npz):
    if peers.missing(runner):
        pytest.skip(f"{runner.label}: {peers.missing(runner)}")
    sizes = peers.PeerSizes(rounds=1, min_epochs=1, max_epochs=1, latency_calls=2,
                            latency_repeats=2, deadline_factor=2.0)
    flags = [f"--data={tiny_npz}", *peers.task_flags(name, "fashion_mnist", 128, 0, 128, sizes)]
    run = peers.run_once(runner, flags, deadline_s=None)
    assert run["model"] == name and run["params"] == _project_params(name)
    assert len(run["epochs"]) == 1 and run["epochs"][0]["examples"] == 256
    assert 0 <= run["epochs"][0]["test_accuracy"] <= 1
    assert run["startup_seconds"] > 0 and run["time_to_accuracy"] is None
    assert len(run["latency_ms"]) == 2 and min(run["latency_ms"]) > 0


def test_a_peer_that_is_not_installed_is_skipped_with_one_line():
    runner = peers.Runner("Nothing", "benchmarks.peer_torch", None, "no_such_framework")
    assert peers.missing(runner) == "no_such_framework is not installed (pip install -e '.[bench]')"
    assert peers.missing(peers.RUNNERS[0]) is None


def test_task_flags_carry_the_projects_defaults_and_targets():
    flags = peers.task_flags("cnn", "fashion_mnist", 128, 0, 5000, peers.FULL)
    assert {"--learning_rate=0.002", "--schedule_epochs=15", "--flip", "--target=0.92",
            "--min_epochs=2"} <= set(flags)
    assert "--flip" not in peers.task_flags("cnn", "mnist", 128, 0, 5000, peers.FULL)
    assert not any(f.startswith("--target") for f in peers.task_flags(
        "mlp", "synthetic", 128, 0, 128, peers.FULL))


def _args(**overrides) -> peer_common.RunArgs:
    argv = ["--model=mlp", "--data=x.npz", "--schedule_epochs=5", "--min_epochs=2",
            "--target=0.8", "--started_at=0"] + [f"--{k}={v}" for k, v in overrides.items()]
    return peer_common.parse_args(argv)


@pytest.mark.parametrize("accuracies, args, stops_after", [
    ([0.9, 0.9, 0.9], {}, 2),  # Target at once; still a steady epoch.
    ([0.5, 0.6, 0.85, 0.9], {}, 3),
    ([0.1] * 5, {}, 5),  # The schedule ends.
    ([0.1] * 5, {"deadline_s": 0}, 2),  # Past the deadline after the minimum.
])
def test_progress_stops_on_target_schedule_or_deadline(accuracies, args, stops_after):
    results = iter(accuracies)
    progress = peer_common.Progress(_args(**args), lambda: next(results))
    stopped = [progress.epoch_done(100, 1.0) for _ in range(stops_after)]
    assert stopped == [False] * (stops_after - 1) + [True]
    reached = progress.result()["time_to_accuracy"]
    first = next((i + 1 for i, a in enumerate(accuracies[:stops_after]) if a >= 0.8), None)
    assert (reached and reached["epochs"]) == first


def _run(steady: float, reached: float | None, stopped: float, target=0.9) -> dict:
    return {"params": {"trainable": 1, "non_trainable": 0}, "target": target,
            "epochs": [{"examples": 100, "seconds": 100 / (steady / 2)}] + [
                {"examples": 100, "seconds": 100 / steady}] * 2,
            "time_to_accuracy": {"seconds": reached, "epochs": 3} if reached else None,
            "elapsed_at_stop": stopped, "startup_seconds": 1.0, "latency_ms": [0.5, 0.7],
            "load_average": 1.0}


def test_goals_are_ratios_within_each_round():
    labels = ["this project", "peer a", "peer b"]
    rounds = [{"mlp": {"this project": _run(100, 10, 10), "peer a": _run(50, 8, 8),
                       "peer b": _run(200, None, 20)}},
              {"mlp": {"this project": _run(300, 20, 20), "peer a": _run(100, 30, 30),
                       "peer b": _run(150, None, 40)}}]
    summary = peers.summarize(rounds, "mlp", labels)
    assert summary["goals"]["training_vs_fastest_peer"]["values"] == [0.5, 2.0]
    assert summary["goals"]["time_to_accuracy_best_peer_vs_project"]["values"] == [0.8, 1.5]
    assert summary["figures"]["peer b"]["time_to_accuracy"] is None
    assert summary["figures"]["this project"]["first_epoch"]["values"] == [50, 150]
    assert peers.deadline(rounds[0]["mlp"]["this project"], peers.FULL) == 20


def test_readme_section_goes_after_the_results_and_is_replaced(tmp_path):
    labels = ["this project", "peer a"]
    rounds = [{"lstm": {"this project": _run(100, 10, 10), "peer a": _run(120, 12, 12)}}]
    results = {"started": "then", "finished": "now", "sizes": vars(peers.FULL),
               "data_source": "test", "skipped": {"peer b": "why"},
               "frameworks": labels, "rounds": rounds,
               "models": {"lstm": peers.summarize(rounds, "lstm", labels)}}
    path = tmp_path / "README.md"
    path.write_text("Prose.\n<!-- results:begin x -->\nold\n<!-- results:end -->\n\nMore.\n")
    for _ in range(2):
        peers_report.update_readme(str(path), results)
    text = path.read_text()
    assert text.startswith("Prose.\n") and text.endswith("\n\nMore.\n")
    assert text.count(peers_report.BEGIN) == 1
    assert text.index("results:end") < text.index(peers_report.BEGIN)
    assert "| LSTM training: this project / fastest peer | 0.83 | 0.83 | >= 1.0 | **not met** |" \
        in text
    assert "Skipped: peer b: why." in text
