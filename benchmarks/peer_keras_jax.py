"""The three networks of keras_tutorial.models in stock Keras 3 on its JAX backend:
`python -m benchmarks.peer_keras_jax --model=cnn --data=arrays.npz ...`.

What a Keras user would write: built-in layers (the model's own batch norm and LSTM, not the
project's fused ones), `keras.optimizers.Adam` on a `CosineDecay` of the project's learning
rate, and `fit` on the NumPy arrays with batch 128 and Keras's defaults (JAX compiles the step,
one step per call). For the CNN, a `RandomFlip` layer mirrors training images, and the model
averages each image's logits with its mirror's outside training, as the project's does.
The backend is set before Keras is imported.
"""

from __future__ import annotations

import math
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from benchmarks import peer_common  # noqa: E402


class AppendMirrors(layers.Layer):
    """Outside training, appends each image's left-right mirror to the batch."""

    def call(self, images, training=False):
        return images if training else ops.concatenate([images, ops.flip(images, axis=2)], 0)


class AverageMirrors(layers.Layer):
    """Outside training, averages the logits of each image and of its appended mirror."""

    def call(self, logits, training=False):
        return logits if training else ops.mean(ops.reshape(logits, (2, -1, 10)), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape  # JAX cannot infer it from a reshape of an unknown batch.


def build(name: str, flip: bool, seed: int) -> keras.Model:
    """The network `models.build(name, average_mirrors=flip)` makes, from stock layers."""
    images = keras.Input((28, 28, 1), dtype="uint8")
    x = AppendMirrors()(images) if flip else images
    x = layers.Rescaling(1.0 / 255)(x)
    if flip:
        x = layers.RandomFlip("horizontal", seed=seed)(x)
    if name == "mlp":
        x = layers.Dense(256, activation="relu")(layers.Flatten()(x))
    elif name == "cnn":
        for i, width in enumerate((32, 64, 128)):
            x = layers.Conv2D(width, 3, use_bias=False)(x)
            if i < 2:
                x = layers.MaxPooling2D(2)(x)
            x = layers.Activation("relu")(layers.BatchNormalization()(x))
        x = layers.Dropout(0.25)(layers.Dense(128, activation="relu")(layers.Flatten()(x)))
    else:
        x = layers.LSTM(128)(layers.Reshape((28, 28))(x))
    logits = layers.Dense(10)(x)
    return keras.Model(images, AverageMirrors()(logits) if flip else logits)


def seed_without_tensorflow(seed: int) -> None:
    """`keras.utils.set_random_seed` as where TensorFlow is not installed: with it installed,
    Keras imports it (seconds of start-up, and its thread pools) only to seed it."""
    sys.modules["tensorflow"] = None  # Importing it now fails, and Keras takes it as absent.
    try:
        keras.utils.set_random_seed(seed)
    finally:
        del sys.modules["tensorflow"]


class EpochClock(keras.callbacks.Callback):
    """Times each epoch of `fit` and stops it when `Progress` says so."""

    def __init__(self, progress: peer_common.Progress, examples: int):
        super().__init__()
        self.progress, self.examples = progress, examples

    def on_epoch_begin(self, epoch, logs=None):
        self.progress.epoch_begins()
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        self.model.stop_training = self.progress.epoch_done(self.examples, seconds)


def main(argv: list[str]) -> None:
    args = peer_common.parse_args(argv)
    seed_without_tensorflow(args.seed)
    model = build(args.model, args.flip, args.seed)
    params = peer_common.keras_param_counts(model)
    if args.params_only:
        peer_common.emit("keras_jax", args, params)
        return
    split = peer_common.load(args)
    steps = math.ceil(len(split.x_train) / args.batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            args.learning_rate, peer_common.schedule_steps(args, steps))),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])

    def test_accuracy() -> float:
        return model.evaluate(split.x_test, split.y_test, batch_size=1000, verbose=0)[1]

    progress = peer_common.Progress(args, test_accuracy)
    model.fit(split.x_train, split.y_train, batch_size=args.batch_size,
              epochs=args.schedule_epochs, shuffle=True, verbose=0,
              callbacks=[EpochClock(progress, len(split.x_train))])
    latency = peer_common.latency_ms(
        args, lambda image: model.predict_on_batch(image).argmax(1), split.x_test[:1])
    assert "tensorflow" not in sys.modules, "stock Keras on JAX should not start TensorFlow"
    peer_common.emit("keras_jax", args, params, **progress.result(), latency_ms=latency,
                     version=f"keras {keras.__version__}, jax {jax.__version__}")


if __name__ == "__main__":
    main(sys.argv[1:])
