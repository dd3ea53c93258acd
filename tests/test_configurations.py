"""Every configuration `auto` can choose, run on this machine with stand-ins for what it lacks.

The slow tests run `python -m keras_tutorial.configurations` once and check each kind of
machine's rows; the table it prints (what ran here, what was checked statically) is shown at
the end of the module.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from keras_tutorial import configurations, distribute, models

CPU_HERE = distribute.Devices(cpu_cores=2)
ONE_GPU_HERE = distribute.Devices(gpus=1, compute_capability=(9, 0), cpu_cores=16)
GPU_KINDS = ("gpu", "older_gpu", "gpus")


# (kind, machine here) -> (strategy run here, parts of the kind's strategy left unrun).
@pytest.mark.parametrize("kind, here, strategy, unrun", [
    ("cpu", CPU_HERE, "default", ()),
    ("gpu", CPU_HERE, "default", ("OneDeviceStrategy on /gpu:0",)),
    ("older_gpu", CPU_HERE, "default", ("OneDeviceStrategy on /gpu:0",)),
    ("gpus", CPU_HERE, "mirrored", ("all-reduce between GPUs (NCCL)",)),
    ("tpu", CPU_HERE, "default", ("TPUStrategy",)),
    ("gpu", ONE_GPU_HERE, "one_device", ()),
    ("gpus", ONE_GPU_HERE, "mirrored", ("all-reduce between GPUs (NCCL)",)),
    ("tpu", ONE_GPU_HERE, "one_device", ("TPUStrategy",)),
])
def test_each_kind_runs_here_with_a_stand_in_for_what_is_missing(kind, here, strategy, unrun):
    for model in models.MODELS:
        plan = configurations.plan(kind, model, here)
        assert plan.choices == distribute.choose(configurations.KINDS[kind], model)
        assert (plan.strategy, plan.unrun) == (strategy, unrun)
        assert plan.trace_as_gpu == (kind in GPU_KINDS and not here.gpus)
    plans = [configurations.plan(kind, "mlp", here)]
    assert configurations.cpu_replicas(plans, here) == (2 if strategy == "mirrored"
                                                        and not here.gpus else 1)


def test_the_gpu_trace_finds_cudnn_where_xla_cannot_compile_it(tmp_path):
    """The LSTM under XLA on a GPU: Keras would take cuDNN's kernel, which XLA cannot compile,
    unless the choices keep it off, as `distribute.choose` does under XLA."""
    tpu = configurations.plan("tpu", "lstm", ONE_GPU_HERE).choices  # XLA for the LSTM.
    config = configurations.train_config(configurations.plan("tpu", "lstm", CPU_HERE),
                                         str(tmp_path), 192, 1)
    built = configurations.gpu_trace(config, tpu)
    assert (built["cudnn_lstm"], built["problems"]) == (False, [])
    unfixed = configurations.gpu_trace(config, dataclasses.replace(tpu, lstm_cudnn=True))
    assert unfixed["cudnn_lstm"]
    assert any(problem.startswith("XLA cannot compile CudnnRNNV3(bfloat16")
               for problem in unfixed["problems"])


@pytest.fixture(scope="module")
def rows(request):
    """Every kind's configurations for every model, run in one process as the command does."""
    result = subprocess.run([sys.executable, "-m", "keras_tutorial.configurations",
                             "--format=json"], capture_output=True, text=True, timeout=600)
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    found = json.loads(lines[-1])
    yield {(row["kind"], row["model"]): row for row in found}
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        reporter.write_sep("-", "configurations per kind of machine: run here, or only checked "
                                "statically ('not run here', 'GPU trace')")
        reporter.write_line(configurations.format_table(found))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(configurations.KINDS))
def test_the_choices_of_each_kind_train_resume_and_export_here(rows, kind):
    here = distribute.detect_devices()
    for model in models.MODELS:
        row = rows[kind, model]
        chosen = distribute.choose(configurations.KINDS[kind], model)
        assert row["problems"] == [], (kind, model)
        # What the runs recorded in summary.json: the kind's choices, forced here (the fast
        # paths on or off; which of them depends on this machine's cores and threads).
        recorded = dict(row["recorded"])
        assert bool(recorded.pop("fast_paths")) == bool(chosen.fast_paths)
        assert recorded == {"strategy": configurations.plan(kind, model, here).strategy,
                            "precision": chosen.precision, "jit_compile": chosen.jit_compile}
        assert row["resumed_at"] == row["steps_per_epoch"] > 0
        assert (row["export_input"], row["export_output"]) == ("uint8", "float32")
        assert row["export_max_difference"] <= configurations.EXPORT_TOLERANCE[chosen.precision]
        assert row["export_agreement"] >= 0.95
        if kind in GPU_KINDS and not here.gpus:
            # cuDNN's LSTM cannot run on a CPU: Keras falls back to its own loop here, and the
            # trace shows that a GPU takes cuDNN's kernel wherever XLA does not compile the step.
            assert row["gpu_trace"]["cudnn_lstm"] == (model == "lstm" and not chosen.jit_compile)


@pytest.mark.slow
def test_gpu_check_ends_in_one_line_without_a_gpu_and_runs_on_a_cpu_when_told():
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_check.sh")
    if distribute.detect_devices().gpus:
        pytest.skip("a GPU is here: benchmarks/gpu_check.sh would run for real")
    refused = subprocess.run(["bash", script], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHON": sys.executable})
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: TensorFlow sees no GPU")
    assert "Traceback" not in refused.stderr
    ran = subprocess.run(["bash", script, "--norequire_gpu", "--kinds=cpu", "--models=mlp",
                          "--speed_examples=600"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert ran.returncode == 0, ran.stderr[-3000:]
    table = ran.stdout.strip().splitlines()
    assert table[0].split()[:2] == ["kind", "model"]
    assert [line.split()[:2] for line in table[1:]] == [["cpu", "mlp"], ["auto", "here"]]
    assert table[-1].split()[-1] == "ok"
