"""Convert an exported model to TFLite, checked.

    python -m keras_tutorial.tflite --export_dir=saved_models/cnn

Writes `<export_dir>/tflite/<version>/{float,dynamic_range}.tflite` and `tflite_info.json`, after
checking both conversions against the SavedModel on the test split of its dataset. TF Serving
ignores the non-numeric `tflite` directory.
"""

from __future__ import annotations

import json

from absl import flags

from keras_tutorial import cli, config

def define_flags() -> None:
    cli.define_version_flags("convert")
    cli.define_dataset_flags(config.DATASETS, "whose test split checks the TFLite models",
                             "default: the version's own")


def main(argv: list[str]) -> None:
    from keras_tutorial import tflite_models  # TensorFlow, once the flags are good.

    cli.no_arguments(argv)
    values = flags.FLAGS
    target, report = tflite_models.write_tflite(values.export_dir, values.version, values.dataset,
                                  values.data_dir, values.max_examples)
    print(json.dumps({"tflite_dir": target, **report}))


if __name__ == "__main__":
    cli.run(main, define_flags)
