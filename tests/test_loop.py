"""The resumable training loop: kill a run, rerun the same command, get the same weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from keras_tutorial import loop

QUICK_RUN = ["--model=mlp", "--dataset=synthetic", "--max_examples=2000", "--validation_size=200",
             "--batch_size=32", "--epochs=4", "--steps_per_execution=1", "--noexport"]


def _train(workdir, *extra, **popen):
    command = [sys.executable, "-m", "keras_tutorial.train", *QUICK_RUN,
               f"--workdir={workdir}", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _finish(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def _latest_backup(workdir):
    try:
        with open(os.path.join(workdir, "backup", "checkpoint")) as f:
            return f.readline()
    except FileNotFoundError:
        return None


def _kill_after_next_backup(workdir, *extra):
    before = _latest_backup(workdir)
    process = _train(workdir, *extra)
    deadline = time.monotonic() + 120
    while (_latest_backup(workdir) == before and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_twice_killed_deterministic_run_resumes_to_identical_weights(tmp_path):
    flags = ["--deterministic", "--backup_every_steps=9"]
    _finish(_train(tmp_path / "straight", *flags))
    for _ in range(2):
        _kill_after_next_backup(tmp_path / "killed", *flags)
    output = _finish(_train(tmp_path / "killed", *flags))
    assert "resumed at epoch" in output
    resumed = _summary(tmp_path / "killed")
    assert resumed["resumed_from"]["global_step"] > 0
    assert resumed["weights_digest"] == _summary(tmp_path / "straight")["weights_digest"]
    assert resumed["test_accuracy"] == _summary(tmp_path / "straight")["test_accuracy"]


@pytest.mark.slow
def test_finished_run_is_not_retrained_and_other_flags_are_refused(tmp_path):
    _finish(_train(tmp_path))
    digest = _summary(tmp_path)["weights_digest"]
    output = _finish(_train(tmp_path))
    assert "already finished" in output and "Epoch 1/" not in output
    assert _summary(tmp_path)["weights_digest"] == digest
    refused = _train(tmp_path, "--seed=5")
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2
    assert output.strip().splitlines()[-1].startswith(
        f"error: workdir {tmp_path} holds a run with seed=0, not 5")


def test_steps_per_epoch_uses_equal_worker_shards():
    assert loop.steps_per_epoch(55_000, 128, 1) == 429
    assert loop.steps_per_epoch(55_001, 128, 2) == 429  # Each worker: 27,500 examples, 64 a step.


def test_calls_end_on_every_backup_point_and_at_the_epoch_s_end():
    # 10 steps an epoch, 4 per call, a backup every 3 global steps, starting at step 11.
    assert list(loop.chunks(11, 10, 4, 3)) == [(1, True), (3, True), (3, True), (2, False)]
    assert list(loop.chunks(0, 10, 4)) == [(4, False), (4, False), (2, False)]
    assert list(loop.chunks(7, 10, 16, 4)) == [(1, True), (2, False)]
    assert list(loop.chunks(20, 10, 1, 10)) == [(1, False)] * 9 + [(1, True)]
