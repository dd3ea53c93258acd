"""What every runner of the peer comparison shares: its arguments, the data, the epoch
bookkeeping that decides when to stop, serving latency, and the one JSON line it prints.

Imports NumPy only, so that a peer's start-up carries no TensorFlow. Each runner
(`peer_project.py`, `peer_torch.py`, `peer_keras_jax.py`) is started by `peers.py` as
`python -m benchmarks.peer_X ARGS` and prints its results as the last line of standard output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Callable

import numpy as np

MODELS = ("mlp", "cnn", "lstm")


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """One runner's task: which model, on which data, how long, and what to measure."""

    model: str
    data: str  # An .npz of x_train, y_train, x_test, y_test (uint8 [N,28,28,1], int labels).
    validation_size: int  # The first training examples, held out as train.py does.
    batch_size: int
    learning_rate: float  # Adam's initial rate, decayed to zero on a cosine.
    schedule_epochs: int  # The cosine spans this many epochs; no run trains longer.
    flip: bool  # Random mirroring in training; predictions averaged over image and mirror.
    target: float | None  # Test accuracy to reach; None: train `min_epochs` only.
    min_epochs: int  # Trained even after the target is reached (first and steady epochs).
    deadline_s: float | None  # No epoch starts after this many seconds past `started_at`.
    started_at: float  # Wall clock (time.time()) when the parent started this process.
    latency_calls: int
    latency_repeats: int
    seed: int
    variant: str  # A runner's own choice (torch: eager or compile).
    params_only: bool  # Only build the model and print its parameter counts.


def parse_args(argv: list[str], variants: tuple[str, ...] = ("default",)) -> RunArgs:
    """Reads a runner's command line; `started_at` defaults to now."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--data", default="")
    parser.add_argument("--validation_size", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--schedule_epochs", type=int, default=20)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--target", type=float)
    parser.add_argument("--min_epochs", type=int, default=2)
    parser.add_argument("--deadline_s", type=float)
    parser.add_argument("--started_at", type=float, default=time.time())
    parser.add_argument("--latency_calls", type=int, default=100)
    parser.add_argument("--latency_repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=variants, default=variants[0])
    parser.add_argument("--params_only", action="store_true")
    args = parser.parse_args(argv)
    if not args.params_only and not args.data:
        parser.error("--data is required unless --params_only")
    return RunArgs(**vars(args))


@dataclasses.dataclass(frozen=True)
class Split:
    """Training examples (validation held out) and test examples, as in keras_tutorial.data."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load(args: RunArgs) -> Split:
    """The arrays the parent saved, less the validation examples that train.py holds out."""
    with np.load(args.data) as arrays:
        return Split(arrays["x_train"][args.validation_size:],
                     arrays["y_train"][args.validation_size:].astype(np.int64),
                     arrays["x_test"], arrays["y_test"].astype(np.int64))


class Progress:
    """Epoch by epoch: times, test accuracy, and whether to stop.

    Time to accuracy runs from the parent's start of the process (imports, data, building and
    compiling included) to the end of the first epoch whose test accuracy reaches the target,
    less the time spent evaluating, which every runner does only to know when to stop.
    """

    def __init__(self, args: RunArgs, test_accuracy: Callable[[], float]):
        self.args, self.test_accuracy = args, test_accuracy
        self.epochs: list[dict] = []
        self.eval_seconds = 0.0
        self.reached: dict | None = None
        self.first_epoch_start: float | None = None

    def elapsed(self) -> float:
        """Seconds since the process started, evaluation excluded."""
        return time.time() - self.args.started_at - self.eval_seconds

    def epoch_begins(self) -> None:
        if self.first_epoch_start is None:
            self.first_epoch_start = self.elapsed()

    def epoch_done(self, examples: int, seconds: float) -> bool:
        """Records an epoch, evaluates the model on the test split; True when training should
        stop: target reached (or none set) and `min_epochs` done, deadline or schedule over."""
        elapsed = self.elapsed()
        started = time.perf_counter()
        accuracy = float(self.test_accuracy())
        self.eval_seconds += time.perf_counter() - started
        self.epochs.append({"examples": examples, "seconds": seconds, "elapsed": elapsed,
                            "test_accuracy": accuracy})
        if self.reached is None and self.args.target is not None and accuracy >= self.args.target:
            self.reached = {"seconds": elapsed, "epochs": len(self.epochs)}
        if len(self.epochs) >= self.args.schedule_epochs:
            return True
        if len(self.epochs) < self.args.min_epochs:
            return False
        late = self.args.deadline_s is not None and self.elapsed() > self.args.deadline_s
        return self.reached is not None or self.args.target is None or late

    def result(self) -> dict:
        return {"epochs": self.epochs, "startup_seconds": self.first_epoch_start,
                "time_to_accuracy": self.reached, "target": self.args.target,
                "elapsed_at_stop": self.epochs[-1]["elapsed"] if self.epochs else None}


def schedule_steps(args: RunArgs, steps_per_epoch: int) -> int:
    """Steps over which the learning rate decays, as train.py sets them: its epochs' worth."""
    return args.schedule_epochs * steps_per_epoch


def latency_ms(args: RunArgs, predict: Callable[[np.ndarray], np.ndarray],
               image: np.ndarray) -> list[float]:
    """Milliseconds per call of `predict` on one image (classes as NumPy), after a warm-up
    call; one figure per repeat of `latency_calls` calls."""
    predict(image)
    results = []
    for _ in range(args.latency_repeats):
        started = time.perf_counter()
        for _ in range(args.latency_calls):
            predict(image)
        results.append(1000 * (time.perf_counter() - started) / args.latency_calls)
    return results


def emit(framework: str, args: RunArgs, params: dict[str, int], **fields) -> None:
    """Prints the runner's results as one JSON line, the last of its standard output."""
    line = {"framework": framework, "variant": args.variant, "model": args.model,
            "params": params, **fields}
    sys.stdout.flush()
    print(json.dumps(line), flush=True)
