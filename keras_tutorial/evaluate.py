"""Evaluate an exported model on a dataset split.

    python -m keras_tutorial.evaluate --export_dir=saved_models/cnn

Prints the accuracy, the accuracy of each class and the confusion matrix, and writes them to
`<output_dir>/evaluation.json` beside two pictures: `confusion_matrix.png` and
`worst_mistakes.png`, the misclassified images that the model was surest about, each titled
with the model, version, dataset, split and accuracy. By default the version is evaluated on
the test split of the dataset it was trained on, and the results of each model and version go
to a directory of their own, runs/evaluate/<model>/<version>/.
"""

from __future__ import annotations

import os

from absl import flags

from keras_tutorial import cli, config

# Each model and version gets its own directory; {model} is the export directory's name.
OUTPUT_DIR = os.path.join("runs", "evaluate", "{model}", "{version}")


def define_flags() -> None:
    cli.define_version_flags("evaluate")
    cli.define_dataset_flags(config.DATASETS, "to evaluate on", "default: the version's own")
    flags.DEFINE_enum("split", "test", ("train", "test"), "The split to evaluate on.")
    flags.DEFINE_string("output_dir", OUTPUT_DIR,
                        "Where evaluation.json and the two PNG images go; {model} stands for "
                        "the export directory's name, {version} for the version's number.")


def main(argv: list[str]) -> None:
    from keras_tutorial import evaluation  # TensorFlow, once the flags are good.

    cli.no_arguments(argv)
    values = flags.FLAGS
    result, output_dir = evaluation.run(values.export_dir, values.output_dir, values.version,
                                        values.dataset, values.split, values.data_dir,
                                        values.max_examples)
    print(evaluation.format_report(result))
    print(f"\nWrote {evaluation.EVALUATION_FILE}, {evaluation.CONFUSION_FILE} and "
          f"{evaluation.MISTAKES_FILE} in {output_dir}")


if __name__ == "__main__":
    cli.run(main, define_flags)
