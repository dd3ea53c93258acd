"""Run a multi-worker job on this machine: `python -m keras_tutorial.launch --workers=2 -- <flags>`.

Starts N `keras_tutorial.train` processes, each with its own `TF_CONFIG` on a free loopback
port, prefixes their output with the worker's index, and waits for all. If one fails or the
timeout passes, all are ended: a worker whose peer is gone would otherwise wait forever. Ctrl-C
or SIGTERM, to launch or to any one worker, stops every worker at the same step, backed up
(loop.py); a second Ctrl-C ends them at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from keras_tutorial import cli
from keras_tutorial.errors import Interrupted
from keras_tutorial.stopping import CaughtSignal, catch_stop_signals

# The exit statuses of a worker that a signal stopped cleanly, and the signals behind them.
STOPPED_BY = {128 + signal.SIGINT: signal.SIGINT, 128 + signal.SIGTERM: signal.SIGTERM}


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that were free a moment ago (held together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(ports: list[int]) -> list[str]:
    """One TF_CONFIG per worker; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(len(ports))]


def _relay(index: int, stream, out) -> None:
    for line in stream:
        out.write(f"[worker {index}] {line}")
        out.flush()


def _start(train_flags: list[str], workers: int,
           out) -> tuple[list[subprocess.Popen], list[threading.Thread]]:
    """The workers, each in a session of its own (the terminal's Ctrl-C reaches launch alone,
    which passes it on), and the threads that relay their output."""
    processes, relays = [], []
    for index, tf_config in enumerate(tf_configs(free_ports(workers))):
        process = subprocess.Popen(
            [sys.executable, "-m", "keras_tutorial.train", *train_flags],
            env={**os.environ, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        relay = threading.Thread(target=_relay, args=(index, process.stdout, out), daemon=True)
        relay.start()
        processes.append(process)
        relays.append(relay)
    return processes, relays


def _watch(processes: list[subprocess.Popen], timeout: float, caught: CaughtSignal,
           out) -> tuple[int, int]:
    """Waits for the job to end: (exit status, 0) when it succeeds, fails or times out;
    (0, signal) when a signal came to launch or stopped a worker."""
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        codes = [process.poll() for process in processes]
        stopped = [STOPPED_BY[code] for code in codes if code in STOPPED_BY]
        if caught.number or stopped:
            return 0, caught.number or stopped[0]
        failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            index, code = failed[0]
            out.write(f"launch: worker {index} exited with status {code}; ending the others\n")
            return code, 0
        if all(code == 0 for code in codes):
            return 0, 0
        if deadline and time.monotonic() > deadline:
            out.write(f"launch: timed out after {timeout:g} s; ending all workers\n")
            return 124, 0
        time.sleep(0.2)


def _stopped(processes: list[subprocess.Popen], signal_number: int, forward: bool,
             seconds: float) -> Interrupted:
    """Passes the signal on to the workers if it came to launch (a worker stopped by one has
    told the others), and waits up to `seconds` for them to back up and exit."""
    if forward:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal_number)
    deadline = time.monotonic() + seconds
    unclean = []
    for index, process in enumerate(processes):
        try:
            code = process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            unclean.append(f"worker {index} did not stop within {seconds:g} s")
            continue
        if code not in STOPPED_BY and code != 0:
            unclean.append(f"worker {index} exited with status {code}")
    if unclean:
        return Interrupted(f"launch: interrupted; {', '.join(unclean)}: run the same command "
                           "to resume from the last backup", signal_number)
    return Interrupted("launch: interrupted; every worker stopped cleanly: run the same command "
                       "to resume", signal_number)


def _end_all(processes: list[subprocess.Popen], grace_seconds: float) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def launch(train_flags: list[str], workers: int, timeout: float = 0,
           grace_seconds: float = 5, out=sys.stdout, stop_seconds: float = 60) -> int:
    """Runs the job; returns 0 if every worker succeeded, else the first failure's status.

    Ctrl-C or SIGTERM (to launch, or one that stopped a worker) raises `Interrupted` once the
    workers have backed up and exited, or `stop_seconds` passed and they are ended.
    """
    processes, relays = _start(train_flags, workers, out)
    try:
        with catch_stop_signals() as caught:
            code, signal_number = _watch(processes, timeout, caught, out)
        if signal_number:
            raise _stopped(processes, signal_number, bool(caught.number), stop_seconds)
        return code
    except KeyboardInterrupt:  # A second Ctrl-C: no more waiting.
        grace_seconds = 0
        raise
    finally:
        _end_all(processes, grace_seconds)
        for relay in relays:  # Their last lines, such as where each worker stopped.
            relay.join(timeout=5)
        out.flush()


def define_flags() -> None:
    flags.DEFINE_integer("workers", 2, "Number of local worker processes.", lower_bound=1)
    flags.DEFINE_float("timeout", 0, "End the whole job after this many seconds (0: no limit).",
                       lower_bound=0)
    flags.DEFINE_float("grace_seconds", 5, "Ending the job on a failure or the timeout: wait "
                       "this long after SIGTERM before SIGKILL (TensorFlow traps SIGTERM).",
                       lower_bound=0)
    flags.DEFINE_float("stop_seconds", 60, "After Ctrl-C or SIGTERM: wait this long for the "
                       "workers to back up and exit before ending them.", lower_bound=0)


def main(argv: list[str]) -> None:
    values = flags.FLAGS
    sys.exit(launch(argv[1:], values.workers, values.timeout, values.grace_seconds,
                    stop_seconds=values.stop_seconds))


if __name__ == "__main__":
    cli.run(main, define_flags)
