import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import data, export, files, models, versions


@pytest.fixture(scope="module")
def model():
    return models.build("mlp")


@pytest.fixture(scope="module")
def loaded(export_dir):
    return tf.saved_model.load(os.path.join(export_dir, "1"))


def _serve(loaded, images):
    outputs = loaded.signatures["serving_default"](images=tf.constant(images))
    return {key: value.numpy() for key, value in outputs.items()}


def _serve_images(loaded, encoded):
    outputs = loaded.signatures["serve_images"](image_bytes=tf.constant(encoded))
    return {key: value.numpy() for key, value in outputs.items()}


def test_versions_are_numbered_and_nothing_is_left_half_written(model, tmp_path):
    first = export.export_model(model, str(tmp_path), metadata={"model": "mlp"})
    second = export.export_model(model, str(tmp_path))
    assert (first, second) == (str(tmp_path / "1"), str(tmp_path / "2"))
    assert versions.versions(str(tmp_path)) == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    with open(tmp_path / "1" / versions.METADATA_FILE) as f:
        info = json.load(f)
    assert info["model"] == "mlp" and info["tensorflow_version"] == tf.__version__
    assert info["class_names"] == list(data.CLASS_NAMES["mnist"])


def test_reloaded_model_matches_the_in_memory_one(trained_mlp, export_dir, loaded,
                                                  bordered_arrays):
    images = bordered_arrays.x_test[:50]
    expected = tf.nn.softmax(trained_mlp(images)).numpy()
    outputs = _serve(loaded, images)
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert outputs["classes"].dtype == np.int64
    np.testing.assert_array_equal(outputs["classes"], expected.argmax(axis=1))
    names = np.array(data.CLASS_NAMES["fashion_mnist"])[expected.argmax(axis=1)]
    assert [name.decode() for name in outputs["class_names"]] == list(names)

    layer = keras.layers.TFSMLayer(os.path.join(export_dir, "1"),
                                   call_endpoint="serving_default")
    np.testing.assert_allclose(layer(images)["probabilities"], expected, rtol=1e-5, atol=1e-6)


def test_signatures_reject_a_batch_of_the_wrong_dtype_or_shape(loaded):
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="expected to be a uint8 tensor but is a float tensor"):
        serve(images=tf.zeros([2, 28, 28, 1], tf.float32))
    for shape in ([2, 28, 28], [1, 56, 14, 1]):  # The second has 784 pixels, as an MLP needs.
        with pytest.raises(tf.errors.InvalidArgumentError) as excinfo:
            serve(images=tf.zeros(shape, tf.uint8))
        dims = ",".join(map(str, shape))
        assert f"Shape of tensor images [{dims}] is not compatible with expected shape " \
               "[?,28,28,1]" in excinfo.value.message
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        loaded.signatures["serve_images"](image_bytes=tf.constant([b"not an image"]))


def _saved_model_cli(*args):
    beside_python = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = beside_python if os.path.exists(beside_python) else shutil.which("saved_model_cli")
    return subprocess.run([command, *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def test_saved_model_cli_shows_both_signatures(export_dir):
    shown = _saved_model_cli("show", "--dir", os.path.join(export_dir, "1"), "--all")
    serving = shown.split("signature_def['serving_default']")[1]
    assert "inputs['images'] tensor_info:\n        dtype: DT_UINT8\n" \
           "        shape: (-1, 28, 28, 1)" in serving
    for output in ("probabilities", "classes", "class_names"):
        assert f"outputs['{output}']" in serving
    images = shown.split("signature_def['serve_images']")[1]
    assert "inputs['image_bytes'] tensor_info:\n        dtype: DT_STRING\n" \
           "        shape: (-1)" in images


def test_saved_model_cli_run_gives_the_model_s_classes(export_dir, loaded, bordered_arrays):
    images = bordered_arrays.x_test[:3]
    printed = _saved_model_cli(
        "run", "--dir", os.path.join(export_dir, "1"), "--tag_set", "serve",
        "--signature_def", "serving_default",
        "--input_exprs", f"images={images.tolist()}".replace(" ", ""))
    classes = re.search(r"Result for output key classes:\n\[([\d ]+)\]", printed).group(1)
    expected = _serve(loaded, images)
    assert [int(c) for c in classes.split()] == list(expected["classes"])
    block = re.search(r"Result for output key probabilities:\n(\[\[.*?\]\])", printed, re.S)
    numbers = re.findall(r"\d+\.?\d*(?:e[-+]?\d+)?", block.group(1))
    probabilities = np.array(numbers, dtype=np.float32).reshape(3, data.NUM_CLASSES)
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-6)


def test_serve_images_classifies_png_and_jpeg_bytes_like_their_pixels(loaded, bordered_arrays):
    images = bordered_arrays.x_test[:40]
    pngs = [tf.io.encode_png(image).numpy() for image in images]
    np.testing.assert_allclose(_serve_images(loaded, pngs)["probabilities"],
                               _serve(loaded, images)["probabilities"], atol=1e-6)
    jpegs = [tf.io.encode_jpeg(image, quality=90).numpy() for image in images]
    decoded = np.stack([tf.io.decode_jpeg(jpeg, channels=1).numpy() for jpeg in jpegs])
    np.testing.assert_allclose(_serve_images(loaded, jpegs)["probabilities"],
                               _serve(loaded, decoded)["probabilities"], atol=1e-6)


RUN_CONFIG = {"optimizer": "sgd", "learning_rate": 0.05, "loss": "cross_entropy"}


@pytest.fixture(scope="module")
def mirror_cnn_version(tmp_path_factory):
    """Version 1 of a CNN that averages over mirrors (the Fashion-MNIST default), recorded as
    trained with SGD and cross-entropy."""
    directory = tmp_path_factory.mktemp("mirror_cnn")
    model = models.build("cnn", average_mirrors=True)
    return export.export_model(model, str(directory), metadata={"config": RUN_CONFIG})


def _keras_file(version: str) -> str:
    return os.path.join(version, export.KERAS_FILE)


def _info(version: str) -> dict:
    with open(os.path.join(version, versions.METADATA_FILE)) as f:
        return json.load(f)


def _assert_predicts_as_served(probabilities, version, images):
    served = _serve(tf.saved_model.load(version), images)
    np.testing.assert_allclose(probabilities, served["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), served["classes"])


def test_model_keras_predicts_what_serving_default_serves(export_dir, mirror_cnn_version,
                                                          bordered_arrays):
    images = bordered_arrays.x_test[:40]
    for version in (os.path.join(export_dir, "1"), mirror_cnn_version):
        loaded = keras.models.load_model(_keras_file(version))
        logits = loaded.predict(images, verbose=0)
        _assert_predicts_as_served(tf.nn.softmax(logits).numpy(), version, images)


def test_model_keras_without_a_run_s_settings_is_uncompiled(export_dir):
    assert _info(os.path.join(export_dir, "1"))["keras_model"] == {
        "file": export.KERAS_FILE, "compiled": False}
    assert not keras.models.load_model(_keras_file(os.path.join(export_dir, "1"))).compiled


def test_model_keras_of_a_mean_squared_error_run_is_uncompiled(model, tmp_path):
    version = export.export_model(model, str(tmp_path),
                                  metadata={"config": {**RUN_CONFIG, "loss": "mean_squared_error"}})
    assert _info(version)["keras_model"]["compiled"] is False
    assert not keras.models.load_model(_keras_file(version)).compiled


def test_model_keras_is_compiled_as_the_run_trained_and_fits_again(mirror_cnn_version,
                                                                   bordered_arrays):
    assert _info(mirror_cnn_version)["keras_model"]["compiled"] is True
    loaded = keras.models.load_model(_keras_file(mirror_cnn_version))
    assert isinstance(loaded.get_layer("cnn"), keras.Model)  # The one-image network.
    assert type(loaded.optimizer) is keras.optimizers.SGD
    assert loaded.optimizer.momentum == 0.9
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.05)
    assert isinstance(loaded.loss, keras.losses.SparseCategoricalCrossentropy)
    before = loaded.get_weights()
    history = loaded.fit(bordered_arrays.x_train[:64], bordered_arrays.y_train[:64],
                         batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and 0 <= history["accuracy"][0] <= 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, loaded.get_weights()))


_LOAD_WITHOUT_PACKAGE = """
import json, sys
sys.modules["keras_tutorial"] = None  # Importing it, or anything of it, raises ImportError.
import keras, numpy as np
model = keras.models.load_model(sys.argv[1])
images = np.load(sys.argv[2])
print(json.dumps(keras.ops.softmax(model.predict(images, verbose=0)).numpy().tolist()))
"""


@pytest.mark.slow
def test_model_keras_loads_with_stock_keras_alone(mirror_cnn_version, bordered_arrays,
                                                  tmp_path):
    images = bordered_arrays.x_test[:20]
    np.save(tmp_path / "images.npy", images)
    loaded = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_PACKAGE, _keras_file(mirror_cnn_version),
         str(tmp_path / "images.npy")], capture_output=True, text=True, cwd=tmp_path,
        timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    probabilities = np.array(json.loads(loaded.stdout.splitlines()[-1]), np.float32)
    _assert_predicts_as_served(probabilities, mirror_cnn_version, images)


_EXPORT_FOREVER = """
import sys
from keras_tutorial import export, models
model = models.build("mlp")
print("ready", flush=True)
while True:
    export.export_model(model, sys.argv[1])
"""


def _complete_versions(export_dir: str, checked: set[int], when: str) -> list[int]:
    """The versions, checked to be 1..N and each whole (those in `checked` already were)."""
    found = versions.versions(export_dir)
    assert found == list(range(1, len(found) + 1)), when
    for version in set(found) - checked:
        path = os.path.join(export_dir, str(version))
        assert os.path.isfile(os.path.join(path, versions.METADATA_FILE)), when
        assert os.path.isfile(os.path.join(path, export.KERAS_FILE)), when
        assert "serve_images" in tf.saved_model.load(path).signatures, when
        checked.add(version)
    return found


@pytest.mark.slow
def test_ten_times_killed_export_leaves_no_partial_version(model, tmp_path):
    rng, checked = random.Random(0), set()
    for kill in range(10):
        process = subprocess.Popen([sys.executable, "-c", _EXPORT_FOREVER, str(tmp_path)],
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout.readline().strip() == "ready"
            delay = rng.uniform(0, 2.5)  # An export takes about a second.
            time.sleep(delay)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        _complete_versions(str(tmp_path), checked, f"kill {kill + 1}, after {delay:.2f} s")
    found = _complete_versions(str(tmp_path), checked, "after the kills")
    assert export.export_model(model, str(tmp_path)) == str(tmp_path / str(len(found) + 1))
    assert not [name for name in os.listdir(tmp_path) if not name.isdigit()]


def test_an_export_on_shared_storage_never_deletes_another_host_s_staging(model, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # A pid that no process of this host has now.
    host = socket.gethostname()
    theirs = files.staging_name(f"{host}-peer", gone.pid, "5eed")  # Maybe writing still.
    ours = files.staging_name(host, gone.pid, "dead")  # Killed mid-write, here.
    for name in (theirs, ours):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"part")
    assert export.export_model(model, str(tmp_path)) == str(tmp_path / "1")
    assert sorted(os.listdir(tmp_path)) == sorted(["1", theirs])
    assert (tmp_path / theirs / "saved_model.pb").read_bytes() == b"part"


def test_export_dir_that_is_a_file_is_an_error_naming_it(model, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError) as excinfo:
        export.export_model(model, str(tmp_path / "file"))
    assert excinfo.value.filename == str(tmp_path / "file")
