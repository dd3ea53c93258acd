"""TrainConfig: each default once, per-model defaults filled in, bad values refused in a line."""

import math

import pytest

from keras_tutorial import config
from keras_tutorial.config import TrainConfig
from keras_tutorial.errors import UserError


@pytest.mark.parametrize("model", ["mlp", "cnn", "lstm"])
def test_unset_settings_take_the_model_s_defaults(model):
    resolved = TrainConfig(model=model, dataset="mnist").resolved()
    defaults = config.MODEL_DEFAULTS[model]
    assert (resolved.epochs, resolved.learning_rate, resolved.steps_per_execution) == (
        defaults["epochs"], defaults["learning_rate"], defaults["steps_per_execution"])
    assert resolved.workdir == f"runs/{model}-mnist"
    assert resolved.export_dir == f"saved_models/{model}"


def test_explicit_settings_are_kept():
    resolved = TrainConfig(model="cnn", epochs=2, learning_rate=0.3, steps_per_execution=7,
                           workdir="w", export_dir="e").resolved()
    assert (resolved.epochs, resolved.learning_rate, resolved.steps_per_execution,
            resolved.workdir, resolved.export_dir) == (2, 0.3, 7, "w", "e")


@pytest.mark.parametrize("model, dataset, augment", [
    ("cnn", "fashion_mnist", "flip"), ("cnn", "mnist", "none"), ("cnn", "kmnist", "none"),
    ("cnn", "synthetic", "none"), ("lstm", "fashion_mnist", "none"),
    ("mlp", "fashion_mnist", "none")])
def test_images_are_mirrored_by_default_only_where_labels_survive_it(model, dataset, augment):
    assert TrainConfig(model=model, dataset=dataset).resolved().augment == augment
    assert TrainConfig(model=model, dataset=dataset, augment="none").resolved().augment == "none"


@pytest.mark.parametrize("optimizer, batch_size, factor", [
    ("adam", 128, 1.0), ("adam", 512, 2.0), ("adam", 32, 0.5),
    ("sgd", 128, 1.0), ("sgd", 512, 4.0), ("sgd", 32, 0.25)])
def test_default_learning_rate_scales_with_the_batch(optimizer, batch_size, factor):
    base = config.MODEL_DEFAULTS["mlp"]["learning_rate"] if optimizer == "adam" \
        else config.SGD_LEARNING_RATE
    resolved = TrainConfig(optimizer=optimizer, batch_size=batch_size).resolved()
    assert math.isclose(resolved.learning_rate, base * factor)
    assert TrainConfig(optimizer=optimizer, batch_size=batch_size,
                       learning_rate=0.01).resolved().learning_rate == 0.01


@pytest.mark.parametrize("settings, message", [
    ({"model": "resnet"}, "unknown model 'resnet', expected one of mlp, cnn, lstm"),
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
    ({"augment": "rotate"}, "unknown augment 'rotate'"),
    ({"precision": "int8"}, "unknown precision 'int8'"),
    ({"fast_paths": "yes"}, "unknown fast_paths 'yes', expected one of auto, true, false"),
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"intra_op_threads": -2}, "intra_op_threads must be 0 or more, got -2"),
    ({"learning_rate": -1.0}, "learning_rate must be positive, got -1.0"),
])
def test_bad_values_are_one_line_errors(settings, message):
    with pytest.raises(UserError, match=message) as excinfo:
        TrainConfig(**settings).resolved()
    assert "\n" not in str(excinfo.value)


def test_a_run_is_identified_by_what_changes_its_result():
    base = TrainConfig().resolved()
    assert base.identity() == TrainConfig(verbose=False, export=False).resolved().identity()
    assert base.identity() != TrainConfig(seed=1).resolved().identity()
