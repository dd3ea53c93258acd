import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import data, train

SUMMARY_KEYS = {
    "model", "dataset", "epochs", "test_accuracy", "test_loss", "params",
    "train_examples_per_sec", "first_epoch_examples_per_sec", "wall_seconds",
    "tensorflow_version", "keras_version", "strategy", "replicas", "export_path",
    "trace_seconds", "intra_op_threads"}


def _cli(*flags, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "keras_tutorial.train", *flags],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **(env or {})})


# The CNN gets more, smaller steps: its batch norm's moving statistics trail the weights, and
# catch up only once the learning rate has decayed over several hundred steps.
@pytest.mark.parametrize("model, loss, batch_size, epochs", [
    ("mlp", "cross_entropy", 32, 3), ("mlp", "mean_squared_error", 32, 3),
    ("cnn", "cross_entropy", 8, 6), ("lstm", "cross_entropy", 32, 3)])
def test_learns_far_above_chance(tmp_path, model, loss, batch_size, epochs):
    summary = train.run(train.TrainConfig(
        model=model, dataset="synthetic", loss=loss, max_examples=1200, validation_size=200,
        epochs=epochs, batch_size=batch_size, workdir=str(tmp_path), export=False,
        verbose=False))
    assert summary["test_accuracy"] > 0.6  # Chance is 0.1.
    assert SUMMARY_KEYS <= set(summary)
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.parametrize("model, dataset, augment", [
    ("cnn", "fashion_mnist", "flip"), ("cnn", "mnist", "none"), ("cnn", "kmnist", "none"),
    ("cnn", "synthetic", "none"), ("lstm", "fashion_mnist", "none")])
def test_images_are_mirrored_by_default_only_where_labels_survive_it(model, dataset, augment):
    config = train.TrainConfig(model=model, dataset=dataset).resolved()
    assert config.augment == augment
    mirrors = [layer.name for layer in train.build_model(config).layers if "mirrors" in layer.name]
    assert mirrors == (["append_mirrors", "average_mirrors"] if augment == "flip" else [])
    assert train.TrainConfig(model=model, dataset=dataset,
                             augment="none").resolved().augment == "none"


def test_cli_end_to_end_on_idx_files(tmp_path, idx_dir, small_arrays):
    result = _cli("--model=mlp", "--dataset=fashion_mnist", f"--data_dir={idx_dir}",
                  "--epochs=2", "--validation_size=100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "runs" / "mlp-fashion_mnist" / "summary.json") as f:
        summary = json.load(f)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["epochs"] == 2 and summary["train_examples_per_sec"] > 0
    assert summary["export_path"] == os.path.join("saved_models", "mlp", "1")
    assert os.listdir(tmp_path / "runs" / "mlp-fashion_mnist" / "tensorboard")

    serving = tf.saved_model.load(str(tmp_path / summary["export_path"])
                                  ).signatures["serving_default"]
    outputs = serving(images=tf.constant(small_arrays.x_test))
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    accuracy = np.mean(outputs["classes"].numpy() == small_arrays.y_test)
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("flag, message", [
    ("--model=resnet", "flag --model=resnet: value should be one of <mlp|cnn|lstm>"),
    ("--dataset=cifar10", "flag --dataset=cifar10: value should be one of"),
    ("--epochs=0", "flag --epochs=0: 0 is not a positive integer"),
    ("--batch_size=-5", "flag --batch_size=-5: -5 is not a positive integer"),
    ("--data_dir=/no/such/dir", "error: data directory /no/such/dir does not exist"),
    ("--augment=rotate", "flag --augment=rotate: value should be one of <auto|none|flip>"),
])
def test_bad_flags_exit_non_zero_with_one_clear_line(tmp_path, flag, message):
    result = _cli(flag, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "saved_models")


@pytest.mark.skipif(data._reachable("https://storage.googleapis.com/"),
                    reason="the TFDS download host is reachable, so nothing would fail")
def test_default_dataset_offline_fails_fast(tmp_path):
    result = _cli(cwd=tmp_path, env={"TFDS_DATA_DIR": str(tmp_path / "tfds")})
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: dataset 'mnist' is not in") and "--data_dir" in last_line
    assert "Traceback" not in result.stderr
