"""Run a multi-worker job on this machine: `python -m keras_tutorial.launch --workers=2 -- <flags>`.

Starts N `keras_tutorial.train` processes, each with its own `TF_CONFIG` on a free loopback
port, prefixes their output with the worker's index, and waits for all. If one fails or the
timeout passes, all are ended: a worker whose peer is gone would otherwise wait forever.
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
           grace_seconds: float = 5, out=sys.stdout) -> int:
    """Runs the job; returns 0 if every worker succeeded, else the first failure's status."""
    processes = []
    for index, tf_config in enumerate(tf_configs(free_ports(workers))):
        process = subprocess.Popen(
            [sys.executable, "-m", "keras_tutorial.train", *train_flags],
            env={**os.environ, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=_relay, args=(index, process.stdout, out), daemon=True).start()
        processes.append(process)
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while True:
            codes = [process.poll() for process in processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index, code = failed[0]
                out.write(f"launch: worker {index} exited with status {code}; ending the others\n")
                return code
            if all(code == 0 for code in codes):
                return 0
            if deadline and time.monotonic() > deadline:
                out.write(f"launch: timed out after {timeout:g} s; ending all workers\n")
                return 124
            time.sleep(0.2)
    finally:
        _end_all(processes, grace_seconds)
        out.flush()


def define_flags() -> None:
    flags.DEFINE_integer("workers", 2, "Number of local worker processes.", lower_bound=1)
    flags.DEFINE_float("timeout", 0, "End the whole job after this many seconds (0: no limit).",
                       lower_bound=0)
    flags.DEFINE_float("grace_seconds", 5, "After SIGTERM, wait this long before SIGKILL "
                       "(TensorFlow traps SIGTERM).", lower_bound=0)


def main(argv: list[str]) -> None:
    values = flags.FLAGS
    sys.exit(launch(argv[1:], values.workers, values.timeout, values.grace_seconds))


if __name__ == "__main__":
    cli.run(main, define_flags)
