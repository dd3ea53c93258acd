"""One model's measurements in a process of its own, as `orchestrate.py` starts it:
`python -m benchmarks.model_worker --model=cnn --settings=JSON [--train_only]`.

Threads per op are chosen per model (`distribute.choose`) and can only be set before
TensorFlow starts, hence a fresh process per model. The raw rates are the last line of
standard output, as JSON.
"""

from __future__ import annotations

import json

from absl import flags

from benchmarks import common
from keras_tutorial import cli, config


def define_flags() -> None:
    flags.DEFINE_enum("model", None, config.MODELS, "Model to measure.", required=True)
    flags.DEFINE_string("settings", None, "The run's settings, as `common.settings_json` "
                        "writes them.", required=True)
    flags.DEFINE_bool("train_only", False, "Only training on the pipeline, then the pipeline "
                      "alone (one interleaved round's share).")


def main(argv: list[str]) -> None:
    from benchmarks import timing  # TensorFlow, once the flags are good.
    from keras_tutorial import data, distribute

    cli.no_arguments(argv)
    values = flags.FLAGS
    name, settings = values.model, common.settings_from_json(values.settings)
    threads = distribute.set_intra_op_threads(timing.machine_choices(name).intra_op_threads,
                                              required=False)
    arrays = data.load_arrays(settings.dataset, settings.data_dir, settings.sizes.max_examples,
                              settings.seed)
    if values.train_only:
        raw = timing.measure_training(name, settings, arrays)
    else:
        raw = timing.measure_model(name, settings, arrays)
        raw["defaults"]["intra_op_threads"] = threads
    print(json.dumps(raw), flush=True)


if __name__ == "__main__":
    cli.run(main, define_flags)
