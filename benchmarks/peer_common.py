"""What every runner of the peer comparison shares: its arguments, the data, the epoch
bookkeeping that decides when to stop, serving latency, and the one JSON line it prints.

Imports NumPy and absl only, so that a peer's start-up carries no TensorFlow. Each runner
(`peer_project.py`, `peer_torch.py`, `peer_keras_jax.py`) is started by `peers.py` as
`python -m benchmarks.peer_X ARGS` and prints its results as the last line of standard output.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable

import numpy as np
from absl import flags

from keras_tutorial import cli, config


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
    """Reads a runner's flags (`argv` without the program's name); `started_at` defaults to
    now. A bad flag is one line and exit status 2."""
    values = flags.FlagValues()  # The runner's own: a test may parse several.
    flags.DEFINE_enum("model", None, config.MODELS, "Model to train.", required=True,
                      flag_values=values)
    flags.DEFINE_string("data", "", "The arrays, as the parent saved them (.npz).",
                        flag_values=values)
    flags.DEFINE_integer("validation_size", 5000, "First training examples held out.",
                         flag_values=values)
    flags.DEFINE_integer("batch_size", 128, "Examples per step.", flag_values=values)
    flags.DEFINE_float("learning_rate", 1e-3, "Adam's initial rate.", flag_values=values)
    flags.DEFINE_integer("schedule_epochs", 20, "Epochs of the cosine decay.",
                         flag_values=values)
    flags.DEFINE_bool("flip", False, "Random mirroring; predictions averaged with mirrors.",
                      flag_values=values)
    flags.DEFINE_float("target", None, "Test accuracy to reach.", flag_values=values)
    flags.DEFINE_integer("min_epochs", 2, "Epochs trained at least.", flag_values=values)
    flags.DEFINE_float("deadline_s", None, "No epoch starts after this.", flag_values=values)
    flags.DEFINE_float("started_at", time.time(), "When the parent started this process.",
                       flag_values=values)
    flags.DEFINE_integer("latency_calls", 100, "Batch-1 calls per repeat.", flag_values=values)
    flags.DEFINE_integer("latency_repeats", 3, "Repeats of the latency.", flag_values=values)
    flags.DEFINE_integer("seed", 0, "Seed of weights and shuffling.", flag_values=values)
    flags.DEFINE_enum("variant", variants[0], variants, "The runner's own choice.",
                      flag_values=values)
    flags.DEFINE_bool("params_only", False, "Only print the parameter counts.",
                      flag_values=values)
    try:
        values([sys.argv[0], *argv])
    except flags.Error as e:
        cli.fail(str(e))
    if not (values.params_only or values.data):
        cli.fail("--data is required unless --params_only")
    return RunArgs(**{field.name: values[field.name].value
                      for field in dataclasses.fields(RunArgs)})


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


def keras_param_counts(model) -> dict[str, int]:
    """Trainable weights and the others (batch norm's moving statistics) of a Keras model, of
    any backend."""
    def count(weights: list) -> int:
        return sum(int(np.prod(w.shape)) for w in weights)

    return {"trainable": count(model.trainable_weights),
            "non_trainable": count(model.non_trainable_weights)}


def emit(framework: str, args: RunArgs, params: dict[str, int], **fields) -> None:
    """Prints the runner's results as one JSON line, the last of its standard output."""
    line = {"framework": framework, "variant": args.variant, "model": args.model,
            "params": params, **fields}
    sys.stdout.flush()
    print(json.dumps(line), flush=True)
