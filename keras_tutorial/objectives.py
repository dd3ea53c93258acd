"""What training minimises and how: the tutorial's two losses and its two optimizers."""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from keras_tutorial import data, fastpath
from keras_tutorial.config import LOSSES, OPTIMIZERS, SGD_MOMENTUM, check_choice


# Registered so that a compiled model can be cloned or saved with its loss.
@keras.saving.register_keras_serializable(package="keras_tutorial")
def mean_squared_error_on_probabilities(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The tutorial's MSE loss: squared distance between softmax output and one-hot label."""
    one_hot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), data.NUM_CLASSES)
    return tf.reduce_mean(tf.square(tf.nn.softmax(logits) - one_hot), axis=-1)


@keras.saving.register_keras_serializable(package="keras_tutorial")
def sparse_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of integer labels against logits (the softmax is inside, stably)."""
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def make_loss(name: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The per-example loss (labels, logits) -> [batch]; the loop averages it."""
    check_choice("loss", name, LOSSES)
    return sparse_cross_entropy if name == "cross_entropy" else mean_squared_error_on_probabilities


def make_optimizer(name: str, learning_rate: float, decay_steps: int, loss_scaling: bool = False,
                   fused: bool = False) -> keras.optimizers.Optimizer:
    """Adam or SGD with momentum, the rate following a cosine decay to zero over `decay_steps`.

    `fused` applies the same update with one TensorFlow kernel per variable (fastpath.py);
    `loss_scaling` wraps it for float16 training.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(decay_steps, 1))
    if name == "adam":
        optimizer = (fastpath.FusedAdam if fused else keras.optimizers.Adam)(schedule)
    else:
        optimizer = (fastpath.FusedSGD if fused else keras.optimizers.SGD)(
            schedule, momentum=SGD_MOMENTUM)
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaling else optimizer
