"""TFLite conversion: builtin ops only, checked against the SavedModel, never overwritten."""

import os
import shutil
import socket
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import export, files, models, tflite_models, versions


def _serve(loaded, images):
    outputs = loaded.signatures["serving_default"](images=tf.constant(images))
    return {key: value.numpy() for key, value in outputs.items()}


# The LSTM is exported unrolled; the mirror-averaging CNN (the Fashion-MNIST default) adds
# batch concatenation, flips and a mean, which must all be builtin TFLite ops too.
@pytest.mark.parametrize("name, average_mirrors", [("lstm", False), ("cnn", True)])
def test_export_serves_and_converts_to_builtin_tflite_as_it_predicts(
        tmp_path, bordered_arrays, name, average_mirrors):
    model = models.build(name, average_mirrors=average_mirrors)
    path = export.export_model(model, str(tmp_path))
    images = bordered_arrays.x_test[:20]
    expected = _serve(tf.saved_model.load(path), images)["probabilities"]
    np.testing.assert_allclose(expected, tf.nn.softmax(model(images)).numpy(), atol=1e-6)
    interpreter = tf.lite.Interpreter(model_content=tflite_models.to_tflite(path, "float"))
    converted = interpreter.get_signature_runner("serving_default")(images=images)
    np.testing.assert_allclose(converted["probabilities"], expected, atol=1e-5)


def test_rolled_lstm_saved_model_is_a_clear_tflite_error(tmp_path):
    lstm = models.build("lstm")
    archive = keras.export.ExportArchive()
    archive.track(lstm)
    archive.add_endpoint("serving_default", lambda images: lstm(images),
                         input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.uint8)])
    archive.write_out(str(tmp_path / "1"), verbose=False)
    with pytest.raises(versions.ExportError) as excinfo:
        tflite_models.to_tflite(str(tmp_path / "1"), "float")
    message = str(excinfo.value)
    assert "\n" not in message and "tf.TensorListReserve" in message
    assert "TF select ops" in message and "export the model again" in message


def test_tflite_models_keep_the_saved_model_s_accuracy(export_dir, tmp_path, bordered_arrays):
    directory = shutil.copytree(export_dir, tmp_path / "export")
    gone = subprocess.Popen(["true"])
    gone.wait()  # A conversion killed mid-write leaves its staging directory behind.
    os.makedirs(directory / "tflite" / files.staging_name(socket.gethostname(), gone.pid, "0dead"))
    target, report = tflite_models.write_tflite(str(directory))
    assert target == str(directory / "tflite" / "1")
    assert os.listdir(directory / "tflite") == ["1"]
    assert sorted(os.listdir(target)) == ["dynamic_range.tflite", "float.tflite",
                                          "tflite_info.json"]
    assert report["examples"] == len(bordered_arrays.y_test)
    assert report["float"]["agreement_with_saved_model"] >= 0.995
    assert report["dynamic_range"]["accuracy"] >= report["saved_model_accuracy"] - 0.02
    assert report["dynamic_range"]["bytes"] < report["float"]["bytes"] / 3
    with open(os.path.join(target, "dynamic_range.tflite"), "rb") as f:
        classes = tflite_models.tflite_classes(f.read(), bordered_arrays.x_test)
    assert np.mean(classes == bordered_arrays.y_test) == report["dynamic_range"]["accuracy"]
    with pytest.raises(versions.ExportError, match="already exists: delete it"):
        tflite_models.write_tflite(str(directory))


def test_a_version_s_own_directory_says_what_to_pass(export_dir):
    version = os.path.join(export_dir, "1")
    with pytest.raises(versions.ExportError) as excinfo:
        tflite_models.write_tflite(version)
    assert str(excinfo.value) == (f"{version} is version 1 of {export_dir}: pass "
                                  f"--export_dir={export_dir} --version=1")
    assert not os.path.exists(os.path.join(version, "tflite"))
