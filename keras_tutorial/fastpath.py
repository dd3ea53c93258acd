"""Speed code that leans on Keras internals, fenced: used only where it was measured to pay.

- `FusedAdam`, `FusedSGD`, `FusedBatchNormalization`: Keras's Adam, SGD with momentum and batch
  normalization, computed by TensorFlow's fused kernels. Keras 3 writes each as a dozen small
  ops, whose passes over memory cost a CPU as much as a small model's matmuls.
- `BatchParallelLSTM`: an LSTM that runs parts of its batch as independent chains of ops, so that
  a CPU's cores work side by side.

All give the same results as stock Keras up to float rounding. They use private attributes
(`_get_variable_index`, `_momentums`, `inner_loop`, `.value.handle`), so `unavailable_reason`
tries them once; where a Keras release breaks them, training falls back to stock Keras with one
logged line instead of failing. `distribute.choose` decides where they are on (CPUs only:
benchmarks/README.md has the measurements).
"""

from __future__ import annotations

import functools

from absl import logging
import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_tutorial")
class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam update, applied by TensorFlow's `ResourceApplyAdam` kernel."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype), beta1=beta_1,
            beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


@keras.saving.register_keras_serializable(package="keras_tutorial")
class FusedSGD(keras.optimizers.SGD):
    """Keras's SGD with (non-Nesterov) momentum, applied by `ResourceApplyKerasMomentum`."""

    def update_step(self, gradient, variable, learning_rate):
        if not self.momentum or self.nesterov:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=self.momentums[self._get_variable_index(variable)].value.handle,
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype))


@keras.saving.register_keras_serializable(package="keras_tutorial")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's batch normalization; in training, channels-last images go through TensorFlow's
    fused kernel, and the moving statistics follow the same (biased) batch variance."""

    def call(self, inputs, training=None, mask=None):
        if (not (training and self.trainable) or mask is not None or self.renorm
                or self.synchronized or len(inputs.shape) != 4 or self.axis not in (-1, 3)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")
        channels = x.shape[-1]
        y, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            x, scale=tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels]),
            offset=tf.cast(self.beta, "float32") if self.center else tf.zeros([channels]),
            epsilon=self.epsilon, is_training=True)
        count = tf.cast(tf.size(x) // channels, "float32")
        variance = unbiased_variance * (count - 1) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1 - self.momentum))
        return tf.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_tutorial")
class BatchParallelLSTM(keras.layers.LSTM):
    """An LSTM that runs `slices` parts of its batch as independent chains of ops.

    A time step is a chain of small dependent ops that keeps about one core busy; examples never
    interact in an LSTM, so parts of the batch can run side by side on other cores and give the
    same results. Masks, dropout and state need the whole batch: those run as one call.
    """

    def __init__(self, units: int, slices: int = 2, **kwargs):
        super().__init__(units, **kwargs)
        self.slices = slices

    def _sliceable(self, mask) -> bool:
        return (self.slices > 1 and mask is None and not self.stateful and not self.dropout
                and not self.recurrent_dropout)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        whole = super().inner_loop
        if not self._sliceable(mask):
            return whole(sequences, initial_state, mask, training=training)
        batch = sequences.shape[0]
        if batch is None:  # A serving signature takes any batch, a single image included.
            return tf.cond(tf.shape(sequences)[0] >= self.slices,
                           lambda: self._sliced_loop(sequences, initial_state, training),
                           lambda: whole(sequences, initial_state, None, training=training))
        if batch < self.slices:
            return whole(sequences, initial_state, None, training=training)
        return self._sliced_loop(sequences, initial_state, training)

    def _sliced_loop(self, sequences, initial_state, training):
        """The Keras loop over each slice, its outputs and states concatenated back in order."""
        batch = tf.shape(sequences)[0]
        bounds = tf.range(self.slices + 1) * batch // self.slices
        sizes = bounds[1:] - bounds[:-1]
        parts = zip(tf.split(sequences, sizes, num=self.slices),
                    *(tf.split(state, sizes, num=self.slices) for state in initial_state))
        results = [super(BatchParallelLSTM, self).inner_loop(part, list(states), None,
                                                             training=training)
                   for part, *states in parts]
        return tf.nest.map_structure(lambda *pieces: tf.concat(pieces, axis=0), *results)

    def get_config(self) -> dict:
        return {**super().get_config(), "slices": self.slices}


@functools.cache
def unavailable_reason() -> str | None:
    """Why the fast paths fail with this Keras and TensorFlow, or None when they work."""
    try:
        variable = keras.Variable(np.zeros((2,), np.float32))
        for optimizer in (FusedAdam(0.1), FusedSGD(0.1, momentum=0.9)):
            optimizer.apply_gradients([(tf.ones((2,)), variable)])
        FusedBatchNormalization()(tf.ones((2, 2, 2, 1)), training=True)
        BatchParallelLSTM(2, slices=2)(tf.ones((2, 3, 1)))
    except Exception as e:  # Whatever a changed internal raises, stock Keras still works.
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def usable(wanted: bool) -> bool:
    """Whether to use the fast paths: wanted here and working with this Keras (else one line)."""
    if not wanted:
        return False
    reason = unavailable_reason()
    if reason:
        logging.warning("Fast paths off, stock Keras instead: they fail with Keras %s (%s)",
                        keras.__version__, reason)
    return reason is None


_STOCK_CLASSES = {FusedBatchNormalization: keras.layers.BatchNormalization,
                  BatchParallelLSTM: keras.layers.LSTM}


def stock_layer(layer: keras.layers.Layer, **overrides) -> keras.layers.Layer:
    """A new, unbuilt layer of stock Keras that computes what `layer` computes: what an export
    or a `.keras` file should hold, so that loading it needs nothing of this package."""
    config = {**layer.get_config(), **overrides}
    config.pop("slices", None)
    return _STOCK_CLASSES.get(type(layer), type(layer)).from_config(config)
