import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from keras_tutorial import launch, loop

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
    assert re.findall(r"\[worker (\d)\] .*Wrote ", log) == ["0"]  # The chief alone writes.
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


def _backed_up_step(workdir) -> int:
    """The step of the chief's newest backup (0 before the first)."""
    try:
        with open(workdir / "backup" / "checkpoint") as f:
            return int(re.search(r"ckpt-(\d+)", f.readline()).group(1))
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_a_job_whose_worker_was_killed_mid_epoch_resumes_to_an_unbroken_job_s_weights(tmp_path):
    job = [*TINY_JOB, "--epochs=3", "--deterministic", "--backup_every_steps=4", "--noexport",
           "--noverbose"]
    out = io.StringIO()
    assert launch.launch([*job, f"--workdir={tmp_path / 'unbroken'}"], workers=2, timeout=400,
                         out=out) == 0, out.getvalue()[-3000:]
    workdir = tmp_path / "broken"
    steps_per_epoch = loop.steps_per_epoch(1000, 32, 2)  # 1,000 training examples.
    workers = [subprocess.Popen(
        [sys.executable, "-m", "keras_tutorial.train", *job, f"--workdir={workdir}"],
        env={**os.environ, "TF_CONFIG": tf_config}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL) for tf_config in launch.tf_configs(launch.free_ports(2))]
    try:
        deadline = time.monotonic() + 300
        while (_backed_up_step(workdir) < steps_per_epoch + 4 and time.monotonic() < deadline
               and all(worker.poll() is None for worker in workers)):
            time.sleep(0.02)
        killed_at = _backed_up_step(workdir)
        assert steps_per_epoch < killed_at < 3 * steps_per_epoch, killed_at
        workers[1].send_signal(signal.SIGKILL)  # Mid-epoch: worker 1 dies, the chief waits.
        workers[1].wait()
    finally:
        for worker in workers:  # The job is restarted whole, as Kubernetes restarts it.
            worker.kill()
            worker.wait()
    out = io.StringIO()
    assert launch.launch([*job, f"--workdir={workdir}"], workers=2, timeout=400,
                         out=out) == 0, out.getvalue()[-3000:]
    assert "resumed at epoch" in out.getvalue()

    def summary(name):
        with open(tmp_path / name / "summary.json") as f:
            return json.load(f)

    assert summary("broken")["resumed_from"]["global_step"] >= killed_at
    assert summary("broken")["weights_digest"] == summary("unbroken")["weights_digest"]
