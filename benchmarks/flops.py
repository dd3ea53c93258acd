"""Floating-point work per example, counted from a model's layers.

Only the layers that dominate the arithmetic are counted, as multiply-adds (2 FLOPs each):
Dense, Conv2D and LSTM. Rescaling, activations, pooling and the softmax are left out, so the
fractions of peak derived from these counts are slight underestimates. A training step costs
about 3x the forward pass (forward, plus gradients with respect to activations and weights).
"""

from __future__ import annotations

import math

import keras

from keras_tutorial import models

TRAINING_TO_FORWARD = 3


def dense_macs(inputs: int, units: int, positions: int = 1) -> int:
    """Multiply-adds of a dense layer applied at `positions` places (e.g. time steps)."""
    return positions * inputs * units


def _layer_macs(layer: keras.layers.Layer) -> int:
    if isinstance(layer, keras.layers.Dense):
        inputs, units = layer.kernel.shape
        return dense_macs(inputs, units, math.prod(layer.input.shape[1:-1]))
    if isinstance(layer, keras.layers.Conv2D):
        kernel_h, kernel_w, channels, filters = layer.kernel.shape
        out_h, out_w = layer.output.shape[1:3]
        return out_h * out_w * kernel_h * kernel_w * channels * filters
    if isinstance(layer, keras.layers.LSTM):
        steps, inputs = layer.input.shape[1:]
        units = layer.cell.units
        return dense_macs(inputs + units, 4 * units, steps)  # Four gates, input and state.
    return 0


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one example's forward pass (2 per multiply-add of Dense, Conv2D, LSTM)."""
    return 2 * sum(_layer_macs(layer) for layer in model.layers)


def serving_flops(model: keras.Model) -> int:
    """FLOPs of classifying one example: two forward passes where the model also reads the
    mirror image (`models.AppendMirrors`), else one."""
    mirrors = any(isinstance(layer, models.AppendMirrors) for layer in model.layers)
    return forward_flops(model) * (2 if mirrors else 1)


def tutorial_mlp_forward_flops() -> int:
    """The TF1 tutorial's network, 784 -> 256 -> 10, counted the same way."""
    return 2 * (dense_macs(784, 256) + dense_macs(256, 10))
