"""Train, evaluate and export a model: `python -m keras_tutorial.train --model=cnn`.

The command's flags become one `TrainConfig`; `experiment.run` does the work and writes
`<workdir>/summary.json`, of which a few lines are printed. Every default comes from
`TrainConfig` and `config.MODEL_DEFAULTS`, and `--help` shows it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags

from keras_tutorial import cli, config

DEFAULTS = config.TrainConfig()
PRINTED = ("model", "dataset", "test_accuracy", "train_examples_per_sec", "wall_seconds",
           "export_path")


def _per_model(key: str) -> str:
    return ", ".join(f"{model} {values[key]}" for model, values in config.MODEL_DEFAULTS.items())


def define_flags() -> None:
    d = DEFAULTS
    flags.DEFINE_enum("model", d.model, config.MODELS, "Architecture to train.")
    flags.DEFINE_enum("dataset", d.dataset, config.DATASETS,
                      "A TFDS name, or 'synthetic' for learnable random data.")
    flags.DEFINE_string("data_dir", d.data_dir, "A directory with the four IDX files or "
                        "mnist.npz (read directly), or else TFDS's data directory.")
    flags.DEFINE_integer("epochs", d.epochs, f"Epochs to train (default: {_per_model('epochs')}).",
                         lower_bound=1)
    flags.DEFINE_integer("batch_size", d.batch_size, "GLOBAL batch: the examples of one step "
                         "summed over all replicas and workers.", lower_bound=1)
    flags.DEFINE_float("learning_rate", d.learning_rate, "Initial rate of a cosine decay to zero "
                       f"(default, adam: {_per_model('learning_rate')}; sgd: "
                       f"{config.SGD_LEARNING_RATE}; for a batch of {config.REFERENCE_BATCH_SIZE}, "
                       "scaled to --batch_size by the square root (adam) or linearly (sgd)).")
    flags.DEFINE_enum("optimizer", d.optimizer, config.OPTIMIZERS,
                      f"sgd has momentum {config.SGD_MOMENTUM}.")
    flags.DEFINE_enum("loss", d.loss, config.LOSSES, "Loss on the softmax output.")
    flags.DEFINE_enum("activation", d.activation, config.ACTIVATIONS,
                      "Hidden activation (mlp and cnn).")
    flags.DEFINE_enum("pooling", d.pooling, config.POOLINGS, "Pooling (cnn).")
    flags.DEFINE_bool("batch_norm", d.batch_norm, "Batch normalisation in each conv block (cnn).")
    flags.DEFINE_enum("augment", d.augment, config.AUGMENT_CHOICES, "flip: mirror a random half "
                      "of each training batch, and predict with the mean of the logits of each "
                      "image and its mirror; auto: flip for the cnn on "
                      f"{', '.join(config.MIRROR_SAFE_DATASETS)} (a mirrored garment keeps its "
                      "class, a digit does not), else none.")
    flags.DEFINE_integer("seed", d.seed, "Seed for initial weights, dropout and shuffling.")
    flags.DEFINE_integer("validation_size", d.validation_size,
                         "Training examples held out for validation (0: none).", lower_bound=0)
    flags.DEFINE_integer("max_examples", d.max_examples, "Use at most this many train and test "
                         "examples, for quick runs (0: all).", lower_bound=0)
    flags.DEFINE_string("workdir", d.workdir, "Backups, TensorBoard logs and summary.json "
                        "(default: runs/<model>-<dataset>). Rerunning with it resumes.")
    flags.DEFINE_string("export_dir", d.export_dir, "SavedModel versions 1, 2, ... go here "
                        "(default: saved_models/<model>).")
    flags.DEFINE_bool("export", d.export, "Export a SavedModel after training.")
    flags.DEFINE_enum("strategy", d.strategy, config.STRATEGIES, "tf.distribute strategy. "
                      "auto: multi_worker if TF_CONFIG lists several workers, tpu if one is "
                      "found, mirrored on several GPUs, one_device on one, else default.")
    flags.DEFINE_integer("cpu_replicas", d.cpu_replicas, "Split the CPU into this many logical "
                         "devices, so that --strategy=mirrored has replicas without GPUs.",
                         lower_bound=1)
    flags.DEFINE_integer("intra_op_threads", d.intra_op_threads, "Threads one op may use (0: "
                         "TensorFlow's default, every core). Default: chosen for the machine, "
                         "where measured to pay (docs/training.md).", lower_bound=0)
    flags.DEFINE_enum("precision", d.precision, config.PRECISIONS,
                      "auto: mixed_bfloat16 on TPUs and GPUs of compute capability >= 8.0, "
                      "mixed_float16 (with loss scaling) on older GPUs, float32 on CPUs.")
    flags.DEFINE_enum("jit_compile", d.jit_compile, config.JIT_CHOICES, "XLA-compile the "
                      "training step; auto: on GPUs (not the LSTM, which keeps cuDNN) and TPUs, "
                      "never on CPUs, as measured.")
    flags.DEFINE_enum("fast_paths", d.fast_paths, config.FAST_PATH_CHOICES, "Fused "
                      "optimizer and batch-norm kernels, and the LSTM's and MLP's batch slices "
                      "(fastpath.py, loop.py); auto: on CPUs only, where they were measured to "
                      "pay.")
    flags.DEFINE_integer("steps_per_execution", d.steps_per_execution, "Training steps per call "
                         f"into TensorFlow (default: {_per_model('steps_per_execution')}).",
                         lower_bound=1)
    flags.DEFINE_integer("backup_every_steps", d.backup_every_steps, "Also back up training "
                         "state every this many steps (0: only at the end of each epoch).",
                         lower_bound=0)
    flags.DEFINE_bool("deterministic", d.deterministic, "Deterministic ops: a run killed and "
                      "resumed ends with weights bit-identical to an uninterrupted one (slower).")
    flags.DEFINE_bool("verbose", d.verbose, "Show a progress bar during each epoch (one line "
                      "per epoch when the output is not a terminal).")


def main(argv: list[str]) -> None:
    from keras_tutorial import distribute, experiment  # TensorFlow, once the flags are good.

    cli.no_arguments(argv)
    values = flags.FLAGS
    train_config = config.TrainConfig(**{field.name: values[field.name].value
                                         for field in dataclasses.fields(config.TrainConfig)})
    result = experiment.run(train_config, distribute.read_cluster(os.environ.get("TF_CONFIG")))
    print(json.dumps({key: result.summary.get(key) for key in PRINTED}))


if __name__ == "__main__":
    cli.run(main, define_flags)
