"""A clean stop on Ctrl-C or SIGTERM: the signal is noted, not raised, until the work can stop.

Training (`loop.py`) finishes its current steps and writes a backup; `launch` passes the
signal on to its workers and waits for theirs. Both then raise `errors.Interrupted`, which
the command line reports in one line with the shell's exit status for the signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from typing import Iterator

# Ctrl-C, and the notice of a preempted machine or a deleted pod.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclasses.dataclass
class CaughtSignal:
    """The first stop signal that arrived while `catch_stop_signals` was on (0: none yet)."""

    number: int = 0


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[CaughtSignal]:
    """Notes SIGINT and SIGTERM instead of stopping, in the main thread; the handlers found
    are back afterwards, and after the first signal, so that a second Ctrl-C interrupts at once.

    Signals the process ignores stay ignored. Python knows only the handlers it installed:
    MultiWorkerMirroredStrategy's native SIGTERM handler, which only notes the notice for
    TensorFlow's own preemption handling, gives way to the default here.
    """
    caught = CaughtSignal()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    found = {number: handler for number in STOP_SIGNALS
             if (handler := signal.getsignal(number)) not in (signal.SIG_IGN, None)}

    def put_back() -> None:
        for number, handler in found.items():
            signal.signal(number, handler)

    def note(number: int, frame) -> None:
        caught.number = caught.number or number
        put_back()

    for number in found:
        signal.signal(number, note)
    try:
        yield caught
    finally:
        put_back()
