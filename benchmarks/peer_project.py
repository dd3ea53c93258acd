"""This project in the peer comparison, run as its peers are:
`python -m benchmarks.peer_project --model=cnn --data=arrays.npz ...`.

Trains as `experiment.run` does (its runtime choices for this machine, model, optimizer,
pipeline with augmentation and resumable loop with a backup after every epoch), without
validation; serves from the exported SavedModel as a server would. The first epoch includes
the tracing that the loop does just before it: the peers compile inside theirs.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile

import numpy as np

from keras_tutorial import cli

# TensorFlow's import loads JAX, if installed, for TFLite: start-up that the project's own
# install (no bench extra) does not have (benchmarks/README.md). Imported as where JAX is
# absent, as the Keras-JAX peer runs as where TensorFlow is, and as the project's commands
# import it.
sys.modules["jax"] = None
try:
    cli.import_tensorflow()
finally:
    del sys.modules["jax"]
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import peer_common  # noqa: E402
from keras_tutorial import data, distribute, experiment, export, loop  # noqa: E402
from keras_tutorial.config import TrainConfig  # noqa: E402


class _Stop(Exception):
    """Raised from the end of an epoch once `Progress` says training is done."""


def config_for(args: peer_common.RunArgs) -> TrainConfig:
    """The project's configuration with the comparison's settings, which are its defaults."""
    return TrainConfig(
        model=args.model, batch_size=args.batch_size, seed=args.seed, epochs=args.schedule_epochs,
        learning_rate=args.learning_rate, augment="flip" if args.flip else "none",
        validation_size=args.validation_size, verbose=False).resolved()


def serving_latency(args: peer_common.RunArgs, model: keras.Model, image: np.ndarray,
                    ) -> list[float]:
    """Milliseconds per batch-1 call of the model exported as `experiment.run` exports it."""
    with tempfile.TemporaryDirectory() as export_dir:
        serve = tf.saved_model.load(export.export_model(model, export_dir)).signatures[
            "serving_default"]
        return peer_common.latency_ms(
            args, lambda pixels: serve(images=tf.constant(pixels))["classes"].numpy(), image)


def main(argv: list[str]) -> None:
    args = peer_common.parse_args(argv)
    config = config_for(args)
    runtime = experiment.set_up_runtime(config, distribute.Cluster())
    if args.params_only:
        model = experiment.build_model(config, runtime.choices)
        peer_common.emit("project", args, peer_common.keras_param_counts(model))
        return
    arrays = data.load_npz(args.data)
    pipelines = dataclasses.replace(
        data.make_pipelines(arrays, args.batch_size, args.seed, args.validation_size,
                            config.augment), validation=None)
    with tempfile.TemporaryDirectory() as backup_dir:
        trainer = experiment.build_trainer(config, runtime, pipelines, backup_dir)
        progress = peer_common.Progress(args, lambda: trainer.evaluate(pipelines.test)[1])
        progress.epoch_begins()

        def on_epoch_end(record: loop.EpochRecord) -> None:
            traced = trainer.trace_seconds if record.epoch == 1 else 0.0
            if progress.epoch_done(record.steps * args.batch_size, record.seconds + traced):
                raise _Stop

        try:
            trainer.train(on_epoch_end)
        except _Stop:
            pass
    latency = serving_latency(args, trainer.model, arrays.x_test[:1])
    assert "jax" not in sys.modules, "the project should not start JAX"
    assert "matplotlib" not in sys.modules, "the project's commands start without matplotlib"
    peer_common.emit("project", args, peer_common.keras_param_counts(trainer.model),
                     **progress.result(), latency_ms=latency,
                     version=f"tensorflow {tf.__version__}, keras {keras.__version__}",
                     threads=runtime.intra_op_threads)


if __name__ == "__main__":
    main(sys.argv[1:])
