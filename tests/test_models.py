import keras
import numpy as np
import pytest

from keras_tutorial import models

# 784*256 + 256 + 256*10 + 10: the tutorial's network, weight for weight.
TUTORIAL_MLP_PARAMS = 203_530
# LSTM: 4 gates * (28 inputs + 128 state + 1 bias) * 128 units, then 128*10 + 10 logits.
LSTM_PARAMS = 4 * (28 + 128 + 1) * 128 + 1_290
# CNN: 3x3 kernels 1->32->64->128 (no biases: batch norm's 2 weights and 2 statistics per
# channel replace them), the 3x3x128 map flattened into 128 units, then 10 logits.
CNN_PARAMS = 9 * (1 * 32 + 32 * 64 + 64 * 128) + 4 * (32 + 64 + 128) + 1_152 * 128 + 128 + 1_290


@pytest.mark.parametrize("name", models.MODELS)
def test_raw_pixels_in_logits_out(name):
    model = models.build(name)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    logits = model.predict(images, verbose=0)
    assert model.inputs[0].dtype == "uint8"
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))


def test_parameter_counts():
    assert models.build("mlp").count_params() == TUTORIAL_MLP_PARAMS
    assert models.build("lstm").count_params() == LSTM_PARAMS
    assert models.build("cnn").count_params() == CNN_PARAMS
    assert models.build("cnn").get_layer("flatten").output.shape == (None, 3 * 3 * 128)
    assert models.mlp(hidden_units=(64, 32)).count_params() == 784 * 64 + 64 + 64 * 32 + 32 + 330


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_mirror_averaging_model_predicts_the_mean_over_image_and_mirror(name):
    keras.utils.set_random_seed(0)
    averaging = models.build(name, average_mirrors=True)
    plain = models.build(name)
    plain.set_weights(averaging.get_weights())
    images = np.random.default_rng(1).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    expected = (plain(images) + plain(images[:, :, ::-1])) / 2
    np.testing.assert_allclose(averaging(images), expected, rtol=1e-5, atol=1e-6)
    assert averaging.count_params() == plain.count_params()
    if name == "mlp":  # No dropout: training sees each image once, as the plain model would.
        np.testing.assert_allclose(averaging(images, training=True),
                                   plain(images, training=True), rtol=1e-5, atol=1e-6)


def test_rescaling_is_inside_the_model():
    model = models.build("mlp")
    white = np.full((1, 28, 28, 1), 255, np.uint8)
    rescaled = keras.Model(model.inputs, model.get_layer("rescale").output)(white)
    np.testing.assert_allclose(np.asarray(rescaled), 1.0)


def _layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_tutorial_knobs():
    assert models.build("mlp", activation="sigmoid").get_layer("hidden_0").activation.__name__ \
        == "sigmoid"
    cnn = models.build("cnn", activation="tanh", pooling="average")
    assert [cnn.get_layer(f"tanh_{i}").activation.__name__ for i in range(3)] == ["tanh"] * 3
    assert cnn.get_layer("dense").activation.__name__ == "tanh"
    assert _layer_types(cnn).count("AveragePooling2D") == 2
    assert "MaxPooling2D" not in _layer_types(cnn)


def test_cnn_with_and_without_batch_norm():
    with_norm, without = models.build("cnn"), models.build("cnn", batch_norm=False)
    assert _layer_types(with_norm).count("BatchNormalization") == 3
    assert "BatchNormalization" not in _layer_types(without)
    # Without batch norm the convolutions need their biases back: 32 + 64 + 128 of them, where
    # batch norm had 4 weights per channel.
    assert without.count_params() == with_norm.count_params() - 3 * (32 + 64 + 128)
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    assert np.all(np.isfinite(without(images)))


@pytest.mark.parametrize("name", models.MODELS)
def test_a_model_is_stock_keras_unless_a_fast_path_is_asked_for(name):
    model = models.build(name)
    assert {type(layer).__module__.split(".")[0] for layer in model.layers} == {"keras"}


@pytest.mark.parametrize("name, fast_paths, fast_layer", [
    ("cnn", {"fused_batch_norm": True}, "FusedBatchNormalization"),
    ("lstm", {"lstm_slices": 2}, "BatchParallelLSTM"),
    ("lstm", {"lstm_slices": 2, "lstm_fused_chain": True}, "BatchParallelLSTM"),
])
def test_a_fast_path_asked_for_predicts_as_the_stock_model(name, fast_paths, fast_layer):
    keras.utils.set_random_seed(0)
    stock, fast = models.build(name), models.build(name, **fast_paths)
    assert fast_layer in _layer_types(fast)
    assert fast.count_params() == stock.count_params()
    fast.set_weights(stock.get_weights())
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(fast(images), stock(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "resnet"}, "unknown model 'resnet'"),
    ({"name": "mlp", "activation": "gelu"}, "unknown activation 'gelu'"),
    ({"name": "cnn", "pooling": "min"}, "unknown pooling 'min', expected one of max, average"),
])
def test_bad_choices_are_clear_errors(kwargs, message):
    with pytest.raises(models.ModelError, match=message):
        models.build(**kwargs)
