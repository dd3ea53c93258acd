"""Keras's Adam, SGD with momentum and batch normalization, computed by TensorFlow's fused kernels.

Keras 3 writes these as a dozen small ops each; on a CPU those passes over memory cost as much
as a small model's matmuls (benchmarks/README.md). The fused kernels do the same maths in one op,
so a model learns the same thing, up to float rounding.
"""

from __future__ import annotations

import keras
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
