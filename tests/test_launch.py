import io
import json
import re
import time

import pytest

from keras_tutorial import launch

TINY_JOB = ["--model=mlp", "--dataset=synthetic", "--max_examples=1200", "--validation_size=200",
            "--batch_size=32", "--epochs=2"]


def test_each_worker_gets_its_own_tf_config():
    configs = [json.loads(c) for c in launch.tf_configs(launch.free_ports(3))]
    assert len({tuple(c["cluster"]["worker"]) for c in configs}) == 1
    assert len(set(configs[0]["cluster"]["worker"])) == 3
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]


@pytest.mark.slow
def test_two_workers_train_identical_weights_on_different_examples(tmp_path):
    out = io.StringIO()
    code = launch.launch([*TINY_JOB, f"--workdir={tmp_path / 'run'}",
                          f"--export_dir={tmp_path / 'export'}"], workers=2, timeout=400, out=out)
    log = out.getvalue()
    assert code == 0, log[-3000:]
    weights = {worker: digest for digest, worker in
               re.findall(r"Final weights digest (\w+) \(worker (\d)\)", log)}
    examples = {worker: digest for worker, digest in
                re.findall(r"Worker (\d) of 2 reads examples with digest (\w+)", log)}
    assert set(weights) == set(examples) == {"0", "1"}
    assert weights["0"] == weights["1"]
    assert examples["0"] != examples["1"]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["1"]  # The chief alone.
    with open(tmp_path / "run" / "summary.json") as f:
        summary = json.load(f)
    assert (summary["workers"], summary["replicas"]) == (2, 2)
    assert summary["test_accuracy"] > 0.6


@pytest.mark.slow
def test_a_failed_worker_ends_the_job(tmp_path):
    out = io.StringIO()
    assert launch.launch(["--model=bogus", f"--workdir={tmp_path}"], workers=2, out=out) != 0
    assert "exited with status" in out.getvalue()


@pytest.mark.slow
def test_a_stuck_job_is_ended_at_its_timeout(tmp_path):
    out = io.StringIO()
    started = time.monotonic()
    code = launch.launch([*TINY_JOB, "--epochs=50", f"--workdir={tmp_path}"], workers=2,
                         timeout=4, grace_seconds=2, out=out)
    assert code == 124 and "timed out after 4 s" in out.getvalue()
    assert time.monotonic() - started < 4 + 2 + 5
