"""Evaluate an exported model on a dataset split.

    python -m keras_tutorial.evaluate --export_dir=saved_models/cnn

Prints the accuracy, the accuracy of each class and the confusion matrix, and writes them to
`<output_dir>/evaluation.json` beside two pictures: `confusion_matrix.png` and
`worst_mistakes.png`, the misclassified images that the model was surest about. By default the
version is evaluated on the test split of the dataset it was trained on.
"""

from __future__ import annotations

import os

from absl import flags

from keras_tutorial import cli, config

def define_flags() -> None:
    cli.define_version_flags("evaluate")
    cli.define_dataset_flags(config.DATASETS, "to evaluate on", "default: the version's own")
    flags.DEFINE_enum("split", "test", ("train", "test"), "The split to evaluate on.")
    flags.DEFINE_string("output_dir", os.path.join("runs", "evaluate"),
                        "Where evaluation.json and the two PNG images go.")


def main(argv: list[str]) -> None:
    from keras_tutorial import evaluation  # TensorFlow, once the flags are good.

    cli.no_arguments(argv)
    values = flags.FLAGS
    result = evaluation.run(values.export_dir, values.output_dir, values.version,
                            values.dataset, values.split, values.data_dir, values.max_examples)
    print(evaluation.format_report(result))
    print(f"\nWrote {evaluation.EVALUATION_FILE}, {evaluation.CONFUSION_FILE} and "
          f"{evaluation.MISTAKES_FILE} in {values.output_dir}")


if __name__ == "__main__":
    cli.run(main, define_flags)
