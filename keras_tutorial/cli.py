"""The entry layer every `python -m keras_tutorial.<command>` shares.

A command module defines its flags in a function and ends with `cli.run(main, define_flags)`:
flags exist only in the process whose command parses them, a `UserError` becomes one line on
standard error and exit status 2, and TensorFlow's start-up chatter is quieted. Library modules
never read flags.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence

from absl import app, flags

from keras_tutorial.errors import UserError

# Command modules import this module before TensorFlow (nothing above imports it): TensorFlow's
# C++ start-up log (CUDA probing, CPU features) buries what matters. TF_CPP_MIN_LOG_LEVEL=0
# brings it back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_USER_ERROR = 2


def fail(message: str) -> None:
    """Ends the command with one line on standard error and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None]) -> None:
    """Defines the command's flags, parses them and runs `main`, reporting bad input in a line."""
    define_flags()
    # TensorFlow's own INFO lines (its Python logger) bury the command's progress.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)

    def reported(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as e:
            fail(str(e))

    app.run(reported)


def no_arguments(argv: list[str]) -> None:
    """Rejects positional arguments, for commands that take flags only."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def define_version_flags(what: str) -> None:
    """--export_dir and --version, for commands that read an exported version."""
    flags.DEFINE_string("export_dir", None, "Export directory holding versions 1, 2, ...",
                        required=True)
    flags.DEFINE_integer("version", None, f"Version to {what} (default: the newest).",
                         lower_bound=1)


def define_dataset_flags(datasets: Sequence[str], purpose: str, default_help: str) -> None:
    """--dataset, --data_dir and --max_examples, for commands that read a dataset split."""
    flags.DEFINE_enum("dataset", None, datasets, f"Dataset {purpose} ({default_help}).")
    flags.DEFINE_string("data_dir", None, "Where that dataset is: IDX files, mnist.npz or "
                        "TFDS's data directory (default: the version's own).")
    flags.DEFINE_integer("max_examples", 0, "Use at most this many examples (0: all).",
                         lower_bound=0)
