"""Ctrl-C and SIGTERM stop training cleanly: one line, the shell's status, a backup at the step
reached, and a rerun of the same command that ends as an unbroken run ends."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from keras_tutorial import loop

# About 4,000 steps an epoch: seconds, so that a signal soon after "Epoch 2/2" lands mid-epoch.
ONE_WORKER = ["--model=mlp", "--dataset=synthetic", "--max_examples=16000",
              "--validation_size=200", "--batch_size=4", "--epochs=2", "--deterministic",
              "--noexport"]
ONE_WORKER_STEPS = loop.steps_per_epoch(15_800, 4, 1)
# About 300 steps an epoch, each a round trip between the two workers.
TWO_WORKERS = ["--model=mlp", "--dataset=synthetic", "--max_examples=2600",
               "--validation_size=200", "--batch_size=8", "--epochs=2", "--deterministic",
               "--noexport"]
TWO_WORKER_STEPS = loop.steps_per_epoch(2_400, 8, 2)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """A command started in the background, its output (standard error merged in) collected."""

    def __init__(self, command: list[str], stdout=subprocess.PIPE):
        # SIGINT as a terminal gives it: a test run started in the background (`cmd &`) ignores
        # SIGINT, and a command honours an ignored SIGINT, as under nohup.
        self.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT,
                                        text=True, preexec_fn=_default_sigint)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        if self.process.stdout:
            for line in self.process.stdout:  # To the end: a full pipe would stall the run.
                self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            assert self.process.poll() is None, f"ended before {pattern!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {pattern!r} in {timeout} s:\n{self.output}"
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _train(workdir, *flags: str, stdout=subprocess.PIPE) -> Run:
    return Run([sys.executable, "-m", "keras_tutorial.train", *flags, f"--workdir={workdir}"],
               stdout=stdout)


def _launch(workdir, *flags: str) -> Run:
    return Run([sys.executable, "-m", "keras_tutorial.launch", "--workers=2", "--", *flags,
                f"--workdir={workdir}"])


def _finished(run: Run) -> str:
    assert run.finish() == 0, run.output[-3000:]
    return run.output


def _backed_up_step(workdir) -> int:
    with open(workdir / "backup" / "checkpoint") as f:
        return int(re.search(r"ckpt-(\d+)", f.readline()).group(1))


def _digest(workdir) -> str:
    with open(workdir / "summary.json") as f:
        return json.load(f)["weights_digest"]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """An uninterrupted run, its standard output in a file as under `> file`: (workdir, output)."""
    workdir = tmp_path_factory.mktemp("unbroken")
    with open(workdir / "stdout.txt", "w") as stdout:
        run = _train(workdir / "run", *ONE_WORKER, stdout=stdout)
        assert run.finish() == 0
    with open(workdir / "stdout.txt") as f:
        return workdir / "run", f.read()


@pytest.mark.slow
def test_output_to_a_file_has_a_line_per_epoch_and_no_redrawn_bar(unbroken):
    _, output = unbroken
    assert "\r" not in output and "\x1b[" not in output
    assert re.findall(r"^Epoch (\d)/2$", output, re.MULTILINE) == ["1", "2"]
    assert len(re.findall(rf"^{ONE_WORKER_STEPS}/{ONE_WORKER_STEPS} - .* - loss: ", output,
                          re.MULTILINE)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("signal_number, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_epoch_backs_up_there_and_the_rerun_ends_as_an_unbroken_run(
        tmp_path, unbroken, signal_number, status):
    run = _train(tmp_path, *ONE_WORKER)
    run.wait_for(r"^Epoch 2/2")
    time.sleep(0.3)
    run.process.send_signal(signal_number)
    assert run.finish() == status, run.output[-3000:]
    step = _backed_up_step(tmp_path)
    assert ONE_WORKER_STEPS < step < 2 * ONE_WORKER_STEPS, step  # Mid-epoch, where it stopped.
    where = f"epoch 2, step {step - ONE_WORKER_STEPS}"
    assert run.lines[-1] == f"interrupted at {where}: run the same command to resume\n"
    assert "Traceback" not in run.output and not (tmp_path / "summary.json").exists()

    output = _finished(_train(tmp_path, *ONE_WORKER))
    assert f"resumed at {where}" in output
    assert _digest(tmp_path) == _digest(unbroken[0])


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    # The first Ctrl-C waits for the epoch's validation (long here) and backup; the second
    # comes during that validation.
    run = _train(tmp_path, *ONE_WORKER, "--validation_size=8000")
    run.wait_for(r"^\d+/\d+ - ")  # The epoch's line: its validation begins.
    run.process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    run.process.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.output[-3000:]
    assert run.lines[-1] == "interrupted\n"
    assert "Traceback" not in run.output and "Epoch 2/2" not in run.output


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, oldest first."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append((int(fields[19]), int(entry)))  # Start time, pid.
    return [child for _, child in sorted(children)]


def _stopped_steps(output: str) -> dict[str, str]:
    return dict(re.findall(r"\[worker (\d)\] interrupted at epoch 2, step (\d+): run the same "
                           r"command to resume", output))


@pytest.mark.slow
def test_ctrl_c_to_launch_stops_both_workers_at_one_step_and_the_rerun_matches(tmp_path):
    _finished(_launch(tmp_path / "unbroken", *TWO_WORKERS))
    workdir = tmp_path / "broken"
    run = _launch(workdir, *TWO_WORKERS)
    run.wait_for(r"\[worker 0\] Epoch 2/2")
    time.sleep(0.5)
    run.process.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.output[-3000:]
    steps = _stopped_steps(run.output)
    assert set(steps) == {"0", "1"} and steps["0"] == steps["1"], run.output[-3000:]
    assert _backed_up_step(workdir) == TWO_WORKER_STEPS + int(steps["0"])
    assert 0 < int(steps["0"]) < TWO_WORKER_STEPS
    assert run.lines[-1] == ("launch: interrupted; every worker stopped cleanly: run the same "
                             "command to resume\n")
    assert "Traceback" not in run.output

    output = _finished(_launch(workdir, *TWO_WORKERS))
    assert f"resumed at epoch 2, step {steps['0']}" in output
    assert _digest(workdir) == _digest(tmp_path / "unbroken")


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_one_step(tmp_path):
    run = _launch(tmp_path, *TWO_WORKERS)
    run.wait_for(r"\[worker 0\] Epoch 2/2")
    time.sleep(0.5)
    workers = _children(run.process.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGTERM)  # As Kubernetes ends one pod of a job.
    assert run.finish() == 143, run.output[-3000:]
    steps = _stopped_steps(run.output)
    assert set(steps) == {"0", "1"} and steps["0"] == steps["1"], run.output[-3000:]
    assert _backed_up_step(tmp_path) == TWO_WORKER_STEPS + int(steps["0"])
    assert "every worker stopped cleanly" in run.lines[-1]
    assert "Traceback" not in run.output
