"""Classify image files with an exported model.

    python -m keras_tutorial.predict --export_dir=saved_models/cnn photo.png scan.jpg
    python -m keras_tutorial.predict --export_dir=saved_models/cnn --max_examples=10 \\
        --dataset=fashion_mnist --data_dir=/usr/share/datasets/fashion-mnist

Image files (PNG, JPEG, GIF or BMP, colour or gray) are prepared as `serve_images` prepares
them (docs/deploy.md); IDX image files and dataset splits are classified as they are. Prints a
table of file, class and probability, or JSON with --format=json. Each file that cannot be
classified is one line on standard error, after the others are printed, and exit status 2.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from keras_tutorial import cli, config
from keras_tutorial.errors import UserError

FORMATS = ("table", "json")


def define_flags() -> None:
    cli.define_version_flags("load")
    cli.define_dataset_flags(config.DATASETS, "whose split to classify too",
                             "default: none, only the files given")
    flags.DEFINE_enum("split", "test", ("train", "test"), "The split of --dataset.")
    flags.DEFINE_enum("format", "table", FORMATS, "Print a table or a JSON list.")


def main(argv: list[str]) -> None:
    from keras_tutorial import classify  # TensorFlow, once the flags are good.

    values = flags.FLAGS
    if len(argv) == 1 and values.dataset is None:
        raise UserError("nothing to classify: pass image or IDX files after the flags, or "
                        "--dataset")
    rows, errors = classify.classify(values.export_dir, argv[1:], values.version,
                                     values.dataset, values.split, values.data_dir,
                                     values.max_examples)
    if rows:
        print(json.dumps(rows, indent=1) if values.format == "json"
              else classify.format_table(rows), flush=True)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        sys.exit(cli.EXIT_USER_ERROR)


if __name__ == "__main__":
    cli.run(main, define_flags)
