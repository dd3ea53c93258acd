import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import fused

RTOL = 1e-5  # The fused kernels sum in another order: float rounding, nothing more.


def _train_batch_norm(layer_class, images, weights):
    layer = layer_class(momentum=0.9)
    layer.build(images.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, images.shape[-1], dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = layer(images, training=True)
        loss = tf.reduce_sum(tf.nn.relu(outputs) * weights)
    gradients = tape.gradient(loss, [images, layer.gamma, layer.beta])
    return [outputs, *gradients, layer.moving_mean, layer.moving_variance,
            layer(images, training=False)]


def test_fused_batch_norm_trains_and_predicts_as_keras_does():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(1.0, 3.0, (64, 7, 7, 16)), tf.float32)
    weights = tf.constant(rng.normal(size=(64, 7, 7, 16)), tf.float32)
    expected = _train_batch_norm(keras.layers.BatchNormalization, images, weights)
    actual = _train_batch_norm(fused.FusedBatchNormalization, images, weights)
    names = ["outputs", "d/dimages", "d/dgamma", "d/dbeta", "moving mean", "moving variance",
             "inference outputs"]
    for name, want, got in zip(names, expected, actual):
        scale = np.max(np.abs(np.asarray(want)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                                   atol=RTOL * scale, err_msg=name)


@pytest.mark.parametrize("keras_class, fused_class, kwargs", [
    (keras.optimizers.Adam, fused.FusedAdam, {}),
    (keras.optimizers.SGD, fused.FusedSGD, {"momentum": 0.9}),
])
def test_fused_optimizers_update_as_keras_does(keras_class, fused_class, kwargs):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(30, 20)).astype(np.float32)
    gradients = [rng.normal(size=(30, 20)).astype(np.float32) for _ in range(4)]

    def trained(optimizer_class):
        variable = keras.Variable(start)
        optimizer = optimizer_class(keras.optimizers.schedules.CosineDecay(0.01, 4), **kwargs)
        for gradient in gradients:
            optimizer.apply_gradients([(tf.constant(gradient), variable)])
        return variable.numpy()

    expected = trained(keras_class)
    assert not np.allclose(expected, start)
    np.testing.assert_allclose(trained(fused_class), expected, rtol=0,
                               atol=RTOL * np.max(np.abs(expected)))
