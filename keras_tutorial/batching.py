"""Server-side batching: concurrent small requests to one signature run as one call.

What TF Serving's `--enable_batching` does, without its separate batch threads: the first
request of a batch waits up to a timeout for others with the same signature and the same
example shape, then runs them all as one batch and hands each request its own rows. If the
merged call fails (one request's image does not decode, say), each request is run again alone,
so it gets its own answer or its own error, never another request's.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Hashable

import numpy as np

Outputs = dict[str, np.ndarray]


class _Request:
    """One request waiting in a batch: its inputs, and its outputs or error once run."""

    def __init__(self, inputs: dict[str, np.ndarray]):
        self.inputs = inputs
        sizes = {value.shape[0] if value.ndim else None for value in inputs.values()}
        self.rows = sizes.pop() if len(sizes) == 1 else None
        self.outputs: Outputs | None = None
        self.error: Exception | None = None
        self.done = threading.Event()


class Batcher:
    """Merges concurrent calls that share a key (version, signature, example shapes)."""

    def __init__(self, max_batch_size: int, timeout_seconds: float):
        self.max_batch_size = max_batch_size
        self.timeout_seconds = timeout_seconds
        self._queues: dict[Hashable, list[_Request]] = {}
        self._changed = threading.Condition()

    def call(self, key: Hashable, function: Callable[[dict[str, np.ndarray]], Outputs],
             inputs: dict[str, np.ndarray]) -> Outputs:
        """`function(inputs)`, run as part of a batch of concurrent calls with the same key."""
        request = _Request(inputs)
        if not request.rows or request.rows >= self.max_batch_size:
            return function(inputs)  # Nothing to merge: scalars, unequal batches, full ones.
        with self._changed:
            queue = self._queues.setdefault(key, [])
            queue.append(request)
            leads = len(queue) == 1
            self._changed.notify_all()
        if leads:
            self._run(function, self._gather(key))
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.outputs

    def _gather(self, key: Hashable) -> list[_Request]:
        """Waits until a batch is full or the timeout passes, then takes the whole queue: later
        requests start a new batch, led by their first, while this one runs."""
        deadline = time.monotonic() + self.timeout_seconds
        with self._changed:
            while (sum(r.rows for r in self._queues[key]) < self.max_batch_size
                   and (left := deadline - time.monotonic()) > 0):
                self._changed.wait(left)
            return self._queues.pop(key)

    def _run(self, function: Callable[[dict[str, np.ndarray]], Outputs],
             queue: list[_Request]) -> None:
        """Runs the queue in batches of at most `max_batch_size` rows."""
        batch, rows = [], 0
        for request in queue:
            if rows + request.rows > self.max_batch_size:
                _run_batch(function, batch)
                batch, rows = [], 0
            batch.append(request)
            rows += request.rows
        _run_batch(function, batch)


def _run_batch(function: Callable[[dict[str, np.ndarray]], Outputs],
               batch: list[_Request]) -> None:
    """Runs the batch as one call and splits the outputs; each request alone if that fails."""
    try:
        merged = {name: np.concatenate([r.inputs[name] for r in batch])
                  for name in batch[0].inputs}
        outputs = function(merged)
        if any(np.ndim(value) == 0 or len(value) != len(next(iter(merged.values())))
               for value in outputs.values()):
            raise ValueError("an output is not batched like the inputs")
        start = 0
        for request in batch:
            request.outputs = {name: value[start:start + request.rows]
                               for name, value in outputs.items()}
            start += request.rows
    except Exception:
        for request in batch:
            try:
                request.outputs = function(request.inputs)
            except Exception as e:
                request.error = e
    for request in batch:
        request.done.set()
