"""What the server's tests share: the real app on uvicorn in a thread, and a small HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import uvicorn

from keras_tutorial import app, guard
from keras_tutorial.batching import Batcher
from keras_tutorial.metrics import Metrics
from keras_tutorial.repository import Repository

START_SECONDS = 30


@contextlib.contextmanager
def running_server(export_dir: str, name: str | None = None, batcher: Batcher | None = None,
                   header_seconds: float = guard.DEFAULT_HEADER_SECONDS,
                   max_connections: int = guard.DEFAULT_MAX_CONNECTIONS,
                   **options) -> Iterator[int]:
    """Serves `export_dir` (as `name`, by default its own) on a free loopback port, which it
    yields, as `python -m keras_tutorial.serve` serves it; stops the server after."""
    repository = Repository(export_dir, name or os.path.basename(export_dir), batcher)
    repository.refresh()
    sock = socket.create_server(("127.0.0.1", 0))
    metrics = options.setdefault("metrics", Metrics(repository.name))
    server = uvicorn.Server(uvicorn.Config(
        app.create_app(repository, **options), log_level="warning",
        http=guard.protocol(header_seconds, max_connections, metrics.refused)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=START_SECONDS)
        sock.close()


def call(port: int, method: str, path: str, body: bytes | str | dict | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One request; the status and the JSON answer (NaN and Infinity allowed, as TF Serving)."""
    status, answer, _ = exchange(port, method, path, body, headers)
    return status, answer


def exchange(port: int, method: str, path: str, body: bytes | str | dict | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict, http.client.HTTPMessage]:
    """One request; the status, the JSON answer and the response's headers."""
    if isinstance(body, dict):
        body = json.dumps(body)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body,
                           {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.headers
    finally:
        connection.close()


@contextlib.contextmanager
def serve_command(export_dir: str, *flags: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """`python -m keras_tutorial.serve` on a free loopback port: the process and the port;
    interrupted after, as Ctrl-C would, and its standard error then in `process.stderr_text`."""
    if not any(flag.startswith("--grpc_port") for flag in flags):
        flags += ("--grpc_port=0",)  # TF Serving's 8500 may be taken, by another test's.
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_tutorial.serve", f"--export_dir={export_dir}", "--port=0",
         *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
        assert match, (banner, process.stderr.read() if process.poll() is not None else "")
        yield process, int(match[1])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, process.stderr_text = process.communicate(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            _, process.stderr_text = process.communicate()


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
