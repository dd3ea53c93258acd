"""The command line: flags -> TrainConfig -> experiment.run, one-line errors, --help."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import config, data
from test_experiment import SUMMARY_KEYS


def _cli(*flags, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "keras_tutorial.train", *flags],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **(env or {})})


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


def test_help_shows_every_setting_with_its_single_default():
    result = _cli("--help")
    for field in ("model", "epochs", "learning_rate", "steps_per_execution", "intra_op_threads",
                  "fast_paths"):
        assert f"--{field}" in result.stdout
    assert "cnn 15" in result.stdout  # The CNN's default epochs, from config.MODEL_DEFAULTS.
    assert f"default: '{config.TrainConfig().validation_size}'" in result.stdout
