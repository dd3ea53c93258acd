"""Speed code that leans on Keras and TensorFlow internals, fenced: every use of an internal is
in this module.

- `FusedAdam`, `FusedSGD`, `FusedBatchNormalization`: Keras's Adam, SGD with momentum and batch
  normalization, computed by TensorFlow's fused kernels. Keras 3 writes each as a dozen small
  ops, whose passes over memory cost a CPU as much as a small model's matmuls.
- `BatchParallelLSTM`: an LSTM that runs parts of its batch as independent chains of ops, so that
  a CPU's cores work side by side, each chain in `fused_lstm_chain`'s fewer and larger ops.
- `lstm_traced_as_on_a_gpu` and `registered_kernels`: what `configurations` needs to check, on
  a machine without a GPU, the graph a GPU would run.

All give the same results as stock Keras up to float rounding. They use private attributes
(`_get_variable_index`, `_momentums`, `inner_loop`, `.value.handle`) and a raw
TensorFlow op (`LSTMBlockCellGrad`), so `usable` checks each fast path a run takes once, beside
stock Keras; one that a release breaks is turned off by itself, with one logged line, and the
run trains with stock Keras there instead of failing. `distribute.choose` decides where they
are on (CPUs only: benchmarks/README.md has the measurements).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
from typing import Iterator
from unittest import mock

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import kernels

from keras_tutorial import distribute


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
        # Keras has `renorm` from 3.14; setup.cfg allows releases before it.
        if (not (training and self.trainable) or mask is not None
                or getattr(self, "renorm", False) or self.synchronized
                or len(inputs.shape) != 4 or self.axis not in (-1, 3)):
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


def _icfo(weights: tf.Tensor) -> tf.Tensor:
    """Gate columns from Keras's order (input, forget, cell, output) to the (input, cell,
    forget, output) of TensorFlow's LSTM block kernels."""
    i, f, c, o = tf.split(weights, 4, axis=-1)
    return tf.concat([i, c, f, o], axis=-1)


def _ifco(weights: tf.Tensor) -> tf.Tensor:
    """Gate columns back from the block kernels' order to Keras's."""
    i, c, f, o = tf.split(weights, 4, axis=-1)
    return tf.concat([i, f, c, o], axis=-1)


def fused_lstm_chain(sequences: tf.Tensor, kernel: tf.Tensor, recurrent_kernel: tf.Tensor,
                     bias: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Keras's default LSTM cell (tanh, sigmoid, bias) over `sequences` [batch, time, features]
    from the state (h0, c0): its last output and cell state, in fewer and larger ops.

    Forward, a step is one matmul, bias and sigmoid, which oneDNN runs as one op (the cell
    gate's tanh(z) is computed as 2 sigmoid(2z) - 1, its weights doubled), then the new state.
    Backward, TensorFlow's `LSTMBlockCellGrad` kernel does a step's elementwise work in one op,
    and the weights' gradients are one matmul over all steps after the last instead of one
    small matmul per step. The steps are unrolled (the time dimension must be static): a
    `while_loop`'s control ops and saved-tensor lists cost more than a step's own dozen ops.
    """
    units, steps = recurrent_kernel.shape[0], sequences.shape[1]
    if steps is None:
        raise ValueError(f"the fused LSTM chain needs a static number of time steps, got "
                         f"sequences of shape {sequences.shape}")
    gate_scale = tf.constant(np.repeat([1.0, 1.0, 2.0, 1.0], units), kernel.dtype)

    @tf.custom_gradient
    def chain(sequences, kernel, recurrent_kernel, bias, h0, c0):
        weights = tf.concat([kernel, recurrent_kernel], axis=0)
        scaled_weights, scaled_bias = weights * gate_scale, bias * gate_scale
        h, c, saved = h0, c0, []
        for x in tf.unstack(sequences, axis=1):
            xh = tf.concat([x, h], axis=1)
            gates = tf.sigmoid(tf.nn.bias_add(tf.matmul(xh, scaled_weights), scaled_bias))
            i, f, g, o = tf.split(gates, 4, axis=1)
            g = 2 * g - 1
            c_prev, c = c, f * c + i * g
            tanh_c = tf.tanh(c)
            h = o * tanh_c
            saved.append((x, xh, c_prev, i, f, g, o, c, tanh_c))

        def gradient(dh, dc):
            dh = tf.zeros_like(h) if dh is None else dh
            dc = tf.zeros_like(c) if dc is None else dc
            weights_icfo = _icfo(weights)
            recurrent_icfo_t = tf.transpose(weights_icfo[-units:])
            no_peephole = tf.zeros([units], weights.dtype)
            step_dz = []
            for x, _, c_prev, i, f, g, o, c_next, tanh_c in reversed(saved):
                # The kernel's arithmetic reads none of x, h_prev, w and b: shapes only.
                dc, dz, *_ = tf.raw_ops.LSTMBlockCellGrad(
                    x=x, cs_prev=c_prev, h_prev=dh, w=weights_icfo, wci=no_peephole,
                    wcf=no_peephole, wco=no_peephole, b=bias, i=i, cs=c_next, f=f, o=o, ci=g,
                    co=tanh_c, cs_grad=dc, h_grad=dh, use_peephole=False)
                dh = tf.matmul(dz, recurrent_icfo_t)
                step_dz.append(dz)
            dz = tf.concat(step_dz[::-1], axis=0)
            xh = tf.concat([step[1] for step in saved], axis=0)
            d_weights = _ifco(tf.matmul(xh, dz, transpose_a=True))
            d_bias = _ifco(tf.matmul(tf.ones([1, tf.shape(dz)[0]], dz.dtype), dz)[0])
            d_inputs = tf.reshape(tf.matmul(dz, weights_icfo[:-units], transpose_b=True),
                                  [steps, -1, kernel.shape[0]])
            return (tf.transpose(d_inputs, [1, 0, 2]), d_weights[:-units], d_weights[-units:],
                    d_bias, dh, dc)

        return (h, c), gradient

    return chain(sequences, kernel, recurrent_kernel, bias, h0, c0)


def split_batch(tensors: list[tf.Tensor], parts: int) -> list[tuple[tf.Tensor, ...]]:
    """`tensors` that share a batch, cut into `parts` slices of near-equal size in order: one
    tuple of slices per part. The LSTM's batch slices and the MLP's (`loop`) both cut so."""
    bounds = tf.range(parts + 1) * tf.shape(tensors[0])[0] // parts
    sizes = bounds[1:] - bounds[:-1]
    return list(zip(*(tf.split(tensor, sizes, num=parts) for tensor in tensors)))


@keras.saving.register_keras_serializable(package="keras_tutorial")
class BatchParallelLSTM(keras.layers.LSTM):
    """An LSTM that runs `slices` parts of its batch as independent chains of ops.

    A time step is a chain of small dependent ops that keeps about one core busy; examples never
    interact in an LSTM, so parts of the batch can run side by side on other cores and give the
    same results. Masks, dropout and state need the whole batch: those run as one call. Each
    part runs `fused_lstm_chain` with `fused=True` where the cell is Keras's default and only
    the last output is returned, else Keras's own loop.
    """

    def __init__(self, units: int, slices: int = 2, fused: bool = False, **kwargs):
        super().__init__(units, **kwargs)
        self.slices, self.fused = slices, fused

    def _sliceable(self, mask) -> bool:
        return (self.slices > 1 and mask is None and not self.stateful and not self.dropout
                and not self.recurrent_dropout)

    def _fused_chain(self, sequences: tf.Tensor) -> bool:
        """Whether each slice runs `fused_lstm_chain`: asked for, Keras's default cell, the
        last output only, and a static number of steps."""
        cell = self.cell
        return (self.fused and sequences.shape[1] is not None
                and cell.activation is keras.activations.tanh and cell.use_bias
                and cell.recurrent_activation is keras.activations.sigmoid
                and not (self.return_sequences or self.go_backwards or self.unroll)
                and self.compute_dtype == "float32")

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
        """Each slice's loop, its outputs and states concatenated back in order."""
        fused = self._fused_chain(sequences)
        results = [self._fused_loop(part, states) if fused else
                   super(BatchParallelLSTM, self).inner_loop(part, list(states), None,
                                                             training=training)
                   for part, *states in split_batch([sequences, *initial_state], self.slices)]
        return tf.nest.map_structure(lambda *pieces: tf.concat(pieces, axis=0), *results)

    def _fused_loop(self, sequences, initial_state):
        """`fused_lstm_chain` over one slice, returned as Keras's loop returns it."""
        cell = self.cell
        h, c = fused_lstm_chain(sequences, tf.convert_to_tensor(cell.kernel),
                                tf.convert_to_tensor(cell.recurrent_kernel),
                                tf.convert_to_tensor(cell.bias), *initial_state)
        return h, h[:, None, :], (h, c)

    def get_config(self) -> dict:
        return {**super().get_config(), "slices": self.slices, "fused": self.fused}


def _assert_close(fast, stock, what: str) -> None:
    """Raises unless the fast path's values are stock Keras's up to float rounding."""
    fast, stock = np.asarray(fast), np.asarray(stock)
    if fast.shape != stock.shape or not np.allclose(fast, stock, rtol=1e-4, atol=1e-5):
        raise ValueError(f"{what} differs from stock Keras's")


def _check_fused_optimizer() -> None:
    """Two steps of Adam and of SGD with momentum, fused and stock, on one variable."""
    gradient = tf.constant([0.5, -1.0, 2.0])
    for fused, stock, kwargs in ((FusedAdam, keras.optimizers.Adam, {}),
                                 (FusedSGD, keras.optimizers.SGD, {"momentum": 0.9})):
        values = []
        for optimizer in (fused(0.1, **kwargs), stock(0.1, **kwargs)):
            variable = keras.Variable(np.ones(3, np.float32))
            for _ in range(2):
                optimizer.apply_gradients([(gradient, variable)])
            values.append(variable.numpy())
        _assert_close(*values, f"{fused.__name__}'s update")


def _check_fused_batch_norm() -> None:
    """One training call, fused and stock: outputs and moving statistics."""
    images = tf.reshape(tf.range(24, dtype=tf.float32) % 7, (2, 2, 2, 3))
    results = []
    for layer in (FusedBatchNormalization(dtype="float32"),
                  keras.layers.BatchNormalization(dtype="float32")):
        outputs = layer(images, training=True)
        results.append([outputs, layer.moving_mean, layer.moving_variance])
    for fast, stock in zip(*results):
        _assert_close(fast, stock, "FusedBatchNormalization's training call")


def _check_lstm(fused: bool) -> None:
    """A BatchParallelLSTM's outputs against a stock LSTM's, same fixed weights. Forward only:
    running a gradient too would make every start of an LSTM run slower."""
    sequences = tf.reshape(tf.range(12, dtype=tf.float32) / 12, (2, 3, 2))
    weights = [np.linspace(-1, 1, np.prod(shape), dtype=np.float32).reshape(shape)
               for shape in ((2, 8), (2, 8), (8,))]
    outputs = []
    for layer in (BatchParallelLSTM(2, slices=2, fused=fused, use_cudnn=False, dtype="float32"),
                  keras.layers.LSTM(2, use_cudnn=False, dtype="float32")):
        layer.build(sequences.shape)
        layer.set_weights(weights)
        outputs.append(layer(sequences))
    _assert_close(*outputs, "fused_lstm_chain's output" if fused else "BatchParallelLSTM's output")


def _check_lstm_slices() -> None:
    _check_lstm(fused=False)


def _check_lstm_fused_chain() -> None:
    _check_lstm(fused=True)
    # Its backward's kernel, looked up, not run: a released op keeps its inputs and attributes.
    _ = tf.raw_ops.LSTMBlockCellGrad


# Each fast path that uses internals, with its check and the fields that turn it off. The MLP's
# step slices use none. A run checks only the fast paths it takes.
_CHECKS = {"fused_optimizer": _check_fused_optimizer,
           "fused_batch_norm": _check_fused_batch_norm,
           "lstm_slices": _check_lstm_slices,
           "lstm_fused_chain": _check_lstm_fused_chain}
_OFF = {"fused_optimizer": {"fused_optimizer": False},
        "fused_batch_norm": {"fused_batch_norm": False},
        "lstm_slices": {"lstm_slices": 1, "lstm_fused_chain": False},
        "lstm_fused_chain": {"lstm_fused_chain": False}}


@functools.cache
def unavailable_reason(fast_path: str) -> str | None:
    """Why `fast_path` (one of `_CHECKS`) fails, or computes otherwise than stock Keras, with
    this Keras and TensorFlow; None when it works."""
    try:
        _CHECKS[fast_path]()
    except Exception as e:  # Whatever a changed internal raises, stock Keras still works.
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def usable(choices: distribute.Choices) -> distribute.Choices:
    """`choices` less each fast path that fails with this installation, with one logged line
    each: the one step between `distribute.choose` and what a run builds."""
    for fast_path in _CHECKS:
        if fast_path not in choices.fast_paths:  # Not taken, or off with one it needs.
            continue
        reason = unavailable_reason(fast_path)
        if reason:
            logging.warning("Fast path %s off, stock Keras instead: it fails with Keras %s (%s)",
                            fast_path, keras.__version__, reason)
            choices = dataclasses.replace(choices, **_OFF[fast_path])
    return choices


@contextlib.contextmanager
def lstm_traced_as_on_a_gpu() -> Iterator[None]:
    """Keras's LSTM takes cuDNN's kernel only if it finds a GPU; inside this it is told it
    does, so that a trace builds the graph a GPU would run (nothing is run)."""
    rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
    with mock.patch.object(rnn, "_is_gpu_available", lambda: True):
        yield


def registered_kernels(op: str) -> list:
    """The kernels TensorFlow has for `op`: each with its device type and type constraints."""
    return list(kernels.get_registered_kernels_for_op(op).kernel)


_STOCK_CLASSES = {FusedBatchNormalization: keras.layers.BatchNormalization,
                  BatchParallelLSTM: keras.layers.LSTM}


def stock_layer(layer: keras.layers.Layer, **overrides) -> keras.layers.Layer:
    """A new, unbuilt layer of stock Keras that computes what `layer` computes: what an export
    or a `.keras` file should hold, so that loading it needs nothing of this package."""
    config = {**layer.get_config(), **overrides}
    config.pop("slices", None)
    config.pop("fused", None)
    return _STOCK_CLASSES.get(type(layer), type(layer)).from_config(config)
