"""Keras functional models for the tutorial's three architectures: MLP, CNN and LSTM.

Every builder takes raw uint8 images [batch,28,28,1], rescales them to [0,1] inside the model
(so an exported model takes raw pixels) and returns float32 logits [batch,10]. A model trained
on mirrored images can also average its logits over each image and its mirror when it predicts.
Built with defaults, a model is stock Keras; the caller may ask for each fast path of
fastpath.py by itself (`distribute.Choices` says which, where they pay).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_tutorial import fastpath
from keras_tutorial.config import ACTIVATIONS, MODELS, POOLINGS, check_choice
from keras_tutorial.data import IMAGE_SHAPE, NUM_CLASSES
from keras_tutorial.errors import UserError


class ModelError(UserError):
    """A model setting that cannot be built; the message is one line meant for the user."""


@keras.saving.register_keras_serializable(package="keras_tutorial")
class AppendMirrors(layers.Layer):
    """Outside training, appends the left-right mirror of every image to the batch."""

    def call(self, images, training=False):
        if training:
            return images
        return ops.concatenate([images, ops.flip(images, axis=2)], axis=0)


@keras.saving.register_keras_serializable(package="keras_tutorial")
class AverageMirrors(layers.Layer):
    """Outside training, averages the logits of each image and of its appended mirror."""

    def call(self, logits, training=False):
        if training:
            return logits
        return ops.mean(ops.reshape(logits, (2, -1, logits.shape[-1])), axis=0)


def _image_input(average_mirrors: bool) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The raw-pixel input and the images to classify, rescaled to [0, 1]."""
    images = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="images")
    x = AppendMirrors(name="append_mirrors")(images) if average_mirrors else images
    return images, layers.Rescaling(1.0 / 255, name="rescale")(x)


def _logits(x: keras.KerasTensor, average_mirrors: bool) -> keras.KerasTensor:
    # float32 even under a mixed-precision policy, so that the softmax and loss stay stable.
    logits = layers.Dense(NUM_CLASSES, dtype="float32", name="logits")(x)
    return (AverageMirrors(dtype="float32", name="average_mirrors")(logits) if average_mirrors
            else logits)


def mlp(hidden_units: tuple[int, ...] = (256,), activation: str = "relu",
        dropout: float = 0.0, average_mirrors: bool = False) -> keras.Model:
    """The tutorial's network: 784 pixels -> 256 ReLU units -> 10 logits, by default."""
    check_choice("activation", activation, ACTIVATIONS, ModelError)
    images, x = _image_input(average_mirrors)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden_units):
        x = layers.Dense(units, activation=activation, name=f"hidden_{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return keras.Model(images, _logits(x, average_mirrors), name="mlp")


def cnn(filters: tuple[int, ...] = (32, 64, 128), kernel_size: int = 3, pooling: str = "max",
        activation: str = "relu", dense_units: int = 128, dropout: float = 0.25,
        batch_norm: bool = True, average_mirrors: bool = False,
        fused_batch_norm: bool = False) -> keras.Model:
    """Conv blocks, then a dense layer with dropout: a small convnet that is strong on MNIST.

    Every block but the last halves the map with pooling (28 -> 26 -> 13 -> 11 -> 5 -> 3 by
    default). A block pools before it normalises and activates: max pooling commutes with
    ReLU, and batch norm over the pooled map costs a quarter as much (benchmarks/README.md).
    """
    check_choice("activation", activation, ACTIVATIONS, ModelError)
    check_choice("pooling", pooling, POOLINGS, ModelError)
    pool = layers.MaxPooling2D if pooling == "max" else layers.AveragePooling2D
    norm = fastpath.FusedBatchNormalization if fused_batch_norm else layers.BatchNormalization
    images, x = _image_input(average_mirrors)
    for i, width in enumerate(filters):
        x = layers.Conv2D(width, kernel_size, use_bias=not batch_norm, name=f"conv_{i}")(x)
        if i < len(filters) - 1:
            x = pool(2, name=f"pool_{i}")(x)
        if batch_norm:
            x = norm(name=f"batch_norm_{i}")(x)
        x = layers.Activation(activation, name=f"{activation}_{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation=activation, name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(images, _logits(x, average_mirrors), name="cnn")


def lstm(units: int = 128, dense_units: int = 0, average_mirrors: bool = False,
         slices: int = 1, fused_chain: bool = False, cudnn: bool = True) -> keras.Model:
    """Reads each image as 28 time steps of 28 pixels; the last hidden state is classified.

    The LSTM keeps Keras's default activations, no recurrent dropout and no unrolling: the
    conditions under which Keras runs it with the fused cuDNN kernel on a GPU. `cudnn=False`
    keeps Keras's generic loop even there, for a step that XLA compiles (XLA has no cuDNN
    kernel). `slices` > 1 runs parts of each batch side by side (fastpath.BatchParallelLSTM),
    for a CPU's cores, each as `fastpath.fused_lstm_chain` with `fused_chain`.
    """
    images, x = _image_input(average_mirrors)
    x = layers.Reshape(IMAGE_SHAPE[:2], name="rows_as_steps")(x)
    use_cudnn = "auto" if cudnn else False
    recurrent = (fastpath.BatchParallelLSTM(units, slices=slices, fused=fused_chain,
                                            use_cudnn=use_cudnn, name="lstm")
                 if slices > 1 else layers.LSTM(units, use_cudnn=use_cudnn, name="lstm"))
    x = recurrent(x)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    return keras.Model(images, _logits(x, average_mirrors), name="lstm")


def build(name: str, activation: str = "relu", pooling: str = "max",
          batch_norm: bool = True, average_mirrors: bool = False,
          fused_batch_norm: bool = False, lstm_slices: int = 1, lstm_fused_chain: bool = False,
          lstm_cudnn: bool = True) -> keras.Model:
    """Builds a model by name with its default shape; the tutorial's knobs where they apply.

    `average_mirrors` suits a model trained on randomly mirrored images: it has learned both
    orientations, and averaging them when predicting removes some of each one's errors. The
    CNN's and the LSTM's fast paths are taken as given (`distribute.Choices` holds them), each
    by itself; settings for another model are not read.
    """
    check_choice("model", name, MODELS, ModelError)
    if name == "mlp":
        return mlp(activation=activation, average_mirrors=average_mirrors)
    if name == "cnn":
        return cnn(activation=activation, pooling=pooling, batch_norm=batch_norm,
                   average_mirrors=average_mirrors, fused_batch_norm=fused_batch_norm)
    return lstm(average_mirrors=average_mirrors, slices=lstm_slices,
                fused_chain=lstm_fused_chain, cudnn=lstm_cudnn)
