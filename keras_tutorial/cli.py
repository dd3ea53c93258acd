"""The entry layer every `python -m keras_tutorial.<command>` shares.

A command module defines its flags in a function and ends with `cli.run(main, define_flags)`.
Flags exist only in the process whose command parses them, and are checked before TensorFlow
loads: a command module imports nothing that imports TensorFlow, and its `main` imports the
modules that do the work, so a mistyped flag is reported at once. `--help` lists the command's
own flags with their defaults (`--helpfull`: every flag) and exits 0. A `UserError` becomes one
line on standard error and exit status 2, and so does any error about a file or directory (`error:
<path>: <reason>`), Python's or TensorFlow's; work stopped by a signal (`Interrupted`, or Ctrl-C
anywhere) is one line and the shell's status for that signal (130, 143), never a traceback;
TensorFlow's start-up chatter is quieted. Library modules never read flags.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import tempfile
from typing import Callable, Iterator, Sequence

from absl import app, flags
from absl import logging as absl_logging

from keras_tutorial.errors import Interrupted, UserError

# Command modules import this module before TensorFlow (nothing above imports it): TensorFlow's
# C++ start-up log (CUDA probing, CPU features) buries what matters. TF_CPP_MIN_LOG_LEVEL=0, or
# a command's --verbosity=1, brings it back.
_USER_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Native errors that say only that this machine has no GPU, which a CPU-only user need not read,
# or (TensorFlow 2.18, on every machine) that its CUDA libraries' factories registered twice.
_NO_GPU = re.compile(r"failed call to cuInit|Unable to register cu\w+ factory")
_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")
# Imported by Keras at start for plotting helpers that no command uses.
_UNUSED_BY_COMMANDS = "matplotlib"
# A native log line (absl's format: severity, date, time, thread, file:line]; or, from
# TensorFlow 2.18, date, time, severity, file:line]), in the severities TF_CPP_MIN_LOG_LEVEL
# 0-3 ranks: INFO, WARNING, ERROR, FATAL.
_NATIVE_LOG_LINE = (r"[{severities}]\d{{4}} [\d:.]+ +\d+ [^ ]+:\d+\] "
                    r"|[\d-]+ [\d:.]+: [{severities}] [^ ]+:\d+\] ")
_SEVERITIES = "IWEF"
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
# A line that starts a record of its own: any native log line, or a Python warning.
_RECORD_START = re.compile(_NATIVE_LOG_LINE.format(severities=_SEVERITIES)
                           + r"|.+:\d+: \w*Warning: ")

EXIT_USER_ERROR = 2
# The operating system's reasons, with which TensorFlow's file errors end ("<path>; <reason>").
_OS_REASONS = frozenset(os.strerror(code) for code in errno.errorcode)
# TensorFlow's message around the path: "{{function_node ...}} " before it, " [Op:SaveV2]" after.
_TF_FILE_ERROR = re.compile(r"(?:\{\{.*?\}\} )?(?:[^;]*?: )?(?P<path>[^;]+?); (?P<reason>[^;\[]+?)"
                            r"(?: \[Op:\w+\])?")


def import_tensorflow() -> None:
    """Imports TensorFlow, and with it Keras, without matplotlib; a command calls this before
    anything else imports TensorFlow.

    Keras's import of matplotlib is a large part of a command's start-up (benchmarks/README.md). A command that draws imports matplotlib itself afterwards; with a
    Keras that cannot start without it, TensorFlow is imported as usual.
    """
    if "tensorflow" in sys.modules or _UNUSED_BY_COMMANDS in sys.modules:
        return
    with _native_chatter_held_back():
        sys.modules[_UNUSED_BY_COMMANDS] = None  # Importing it raises ImportError meanwhile.
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass
        finally:
            del sys.modules[_UNUSED_BY_COMMANDS]
        import tensorflow  # noqa: F401, F811
        # Looks for GPUs now, so that a CPU-only machine's cuInit error is held back too.
        tensorflow.config.list_physical_devices()


@contextlib.contextmanager
def _native_chatter_held_back() -> Iterator[None]:
    """Standard error held back, then passed on without the native log lines that
    TF_CPP_MIN_LOG_LEVEL leaves out (INFO and WARNING by default); all of it if the block fails.

    TensorFlow 2.21 logs its import through absl before anything sets absl's level, so
    TF_CPP_MIN_LOG_LEVEL no longer quiets it (CUDA probing and CPU features, twice).
    """
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    dropped = _SEVERITIES[:min(int(level), 3)] if level.isdigit() else "IW"
    if not dropped:
        yield
        return
    sys.stderr.flush()
    stderr = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(stderr, 2)
            os.close(stderr)
            held.seek(0)
            text = held.read().decode(errors="replace")
            sys.stderr.write(text if failed else _without_native_lines(text, dropped))
            sys.stderr.flush()


def _without_native_lines(text: str, severities: str) -> str:
    """`text` without the native log records of these severities (continuation lines included)
    and absl's notice that it logs to stderr."""
    dropped = re.compile(_NATIVE_LOG_LINE.format(severities=severities))
    native = re.compile(_NATIVE_LOG_LINE.format(severities=_SEVERITIES))
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        if (dropped.match(line) or line.startswith(_ABSL_NOTICE)
                or native.match(line) and _NO_GPU.search(line)):
            dropping = True
        elif _RECORD_START.match(line):
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


def fail(message: str) -> None:
    """Ends the command with one line on standard error and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None]) -> None:
    """Defines the command's flags and checks them, then imports TensorFlow quietly and runs
    `main`, reporting bad input in a line."""
    command = _command_name(main)
    defined_before = set(flags.FLAGS)
    define_flags()
    for name in sorted(set(flags.FLAGS) - defined_before):
        flags.FLAGS.register_key_flag_for_module(command, flags.FLAGS[name])

    def reported(argv: list[str]) -> None:
        _quiet_logs(flags.FLAGS.verbosity)
        import_tensorflow()
        try:
            main(argv)
        except UserError as e:
            fail(str(e))
        except Interrupted as e:
            print(str(e), file=sys.stderr)
            sys.exit(e.exit_status)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(Interrupted("").exit_status)
        except Exception as e:
            message = file_error(e)
            if message is None:
                raise  # A bug: its traceback is what helps.
            fail(message)

    doc = sys.modules[main.__module__].__doc__ or ""
    app.run(reported, flags_parser=lambda argv: _parse_flags(command, doc, argv))


def _command_name(main: Callable) -> str:
    """The command's module name, `keras_tutorial.train`, also when run as `python -m`."""
    module = sys.modules[main.__module__]
    spec = getattr(module, "__spec__", None)
    return spec.name if spec is not None else main.__module__


def _parse_flags(command: str, doc: str, argv: list[str]) -> list[str]:
    """absl's parsing, with a refused flag as one line and exit status 2, not a usage dump,
    and `--help` as the command's flags and exit status 0."""
    ours = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    asked = [arg for arg in ours if arg.split("=")[0] in _HELP_FLAGS]
    if asked:
        full = any(arg.startswith("--helpfull") for arg in asked)
        try:
            print(command_help(command, doc, full))
        except BrokenPipeError:  # `--help | head`: the reader has what it wanted.
            sys.stdout = None
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def command_help(command: str, doc: str, full: bool = False) -> str:
    """The command's docstring, then its flags with their defaults (every flag if `full`)."""
    listed = flags.FLAGS.get_help() if full else "\n".join(
        line for line in flags.FLAGS.module_help(command).splitlines()
        if line.strip() != f"{command}:").strip("\n")
    return (f"{doc.strip()}\n\nFlags:\n{listed}\n\n--verbosity=1 also shows TensorFlow's own "
            "log lines; --helpfull lists every flag.")


def _quiet_logs(verbosity: int) -> None:
    """Below --verbosity=1, the command's log lines read `12:03:04 message`, and lines that
    other libraries write at INFO (TensorFlow's saver, its SavedModel writer) are dropped, as
    are TensorFlow's native lines below errors; at 1 or more, everything is shown, in absl's
    full format."""
    if verbosity >= 1:
        if _USER_LOG_LEVEL is None:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    ours = os.path.dirname(os.path.abspath(__file__)) + os.sep
    handler = absl_logging.get_absl_handler()
    handler.addFilter(
        lambda record: record.levelno >= logging.WARNING or record.pathname.startswith(ours))
    handler.setFormatter(_PlainFormatter())


class _PlainFormatter(logging.Formatter):
    """`12:03:04 message`, with `warning: ` or `error: ` before messages of those levels."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"{record.asctime} {prefix}{record.message}"


def file_error(error: Exception) -> str | None:
    """`<path>: <reason>` for an error about a file or directory: an OSError, or one of the
    TensorFlow errors that wrap them (checkpoint, SavedModel and summary writes); else None."""
    if isinstance(error, OSError):
        paths = [str(path) for path in (error.filename, error.filename2) if path is not None]
        reason = error.strerror or str(error) or type(error).__name__
        return f"{' -> '.join(paths)}: {reason}" if paths else reason
    tf_errors = getattr(sys.modules.get("tensorflow"), "errors", None)
    if tf_errors is None or not isinstance(error, tf_errors.OpError):
        return None
    lines = error.message.strip().splitlines()
    match = _TF_FILE_ERROR.fullmatch(lines[0]) if lines else None
    if match is None or match["reason"] not in _OS_REASONS:
        return None
    return f"{match['path']}: {match['reason']}"


def no_arguments(argv: list[str]) -> None:
    """Rejects positional arguments, for commands that take flags only."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])} (this command takes "
                        "flags only; --help lists them)")


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
                        "TFDS's data directory (default: for the version's own dataset, the "
                        "data_dir it was trained from; for another, TFDS's).")
    flags.DEFINE_integer("max_examples", 0, "Use at most this many examples (0: all).",
                         lower_bound=0)
