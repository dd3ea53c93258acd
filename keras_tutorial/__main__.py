"""keras-tutorial: train, use and serve MNIST models with TensorFlow and Keras.

    keras-tutorial <command> [flags]          (or: python -m keras_tutorial <command> [flags])
    keras-tutorial <command> --help           the command's flags and their defaults

Each command is also `python -m keras_tutorial.<command>`.
"""

from __future__ import annotations

import importlib
import sys

from keras_tutorial import cli

COMMANDS = {
    "train": "train, evaluate and export a model",
    "predict": "classify image files with an exported model",
    "evaluate": "accuracy per class and confusion matrix of an exported model",
    "tflite": "convert an exported model to TFLite, checked",
    "serve": "serve an exported model over TF Serving's REST and gRPC APIs, with a page",
    "launch": "run a multi-worker training job on this machine",
}


def usage() -> str:
    listed = "\n".join(f"  {name:<9} {what}" for name, what in COMMANDS.items())
    return f"{__doc__.strip()}\n\ncommands:\n{listed}"


def main(argv: list[str] | None = None) -> None:
    """Runs the command named by the first argument with the rest."""
    argv = sys.argv if argv is None else argv
    if len(argv) < 2:
        print(usage(), file=sys.stderr)
        sys.exit(cli.EXIT_USER_ERROR)
    if argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0)
    command = argv[1]
    if command not in COMMANDS:
        cli.fail(f"unknown command '{command}', expected one of {', '.join(COMMANDS)}")
    module = importlib.import_module(f"keras_tutorial.{command}")
    sys.argv = [f"keras-tutorial {command}", *argv[2:]]
    cli.run(module.main, module.define_flags)


if __name__ == "__main__":
    main()
