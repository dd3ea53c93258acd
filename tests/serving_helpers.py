"""What the server's tests share: the real app on uvicorn in a thread, and a small HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
from typing import Iterator

import uvicorn

from keras_tutorial import serve
from keras_tutorial.batching import Batcher
from keras_tutorial.repository import Repository

START_SECONDS = 30


@contextlib.contextmanager
def running_server(export_dir: str, name: str | None = None, batcher: Batcher | None = None,
                   **options) -> Iterator[int]:
    """Serves `export_dir` (as `name`, by default its own) on a free loopback port, which it
    yields; stops the server after."""
    repository = Repository(export_dir, name or os.path.basename(export_dir), batcher)
    repository.refresh()
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(serve.create_app(repository, **options),
                                           log_level="warning"))
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
         ) -> tuple[int, dict]:
    """One request; the status and the JSON answer (NaN and Infinity allowed, as TF Serving)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()
