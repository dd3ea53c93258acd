import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import export, models


@pytest.fixture(scope="module")
def model():
    return models.build("mlp")


def _images(n=7):
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def test_versions_are_numbered_and_nothing_is_left_half_written(model, tmp_path):
    first = export.export_model(model, str(tmp_path), metadata={"model": "mlp"})
    second = export.export_model(model, str(tmp_path))
    assert (first, second) == (str(tmp_path / "1"), str(tmp_path / "2"))
    assert export.versions(str(tmp_path)) == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    assert os.path.isfile(tmp_path / "1" / export.METADATA_FILE)


def test_serving_signature_matches_the_model(model, tmp_path):
    path = export.export_model(model, str(tmp_path))
    serving = tf.saved_model.load(path).signatures["serving_default"]
    spec = serving.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 28, 28, 1]
    images = _images()
    outputs = serving(images=tf.constant(images))
    expected = tf.nn.softmax(model(images)).numpy()
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert outputs["classes"].dtype == tf.int64
    np.testing.assert_array_equal(outputs["classes"].numpy(), expected.argmax(axis=1))


def _saved_model_cli():
    beside_python = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    return beside_python if os.path.exists(beside_python) else shutil.which("saved_model_cli")


def test_saved_model_cli_lists_uint8_serving_default(model, tmp_path):
    path = export.export_model(model, str(tmp_path))
    shown = subprocess.run([_saved_model_cli(), "show", "--dir", path, "--all"],
                           capture_output=True, text=True, check=True).stdout
    serving = shown.split("signature_def['serving_default']")[1]
    assert "inputs['images'] tensor_info:\n        dtype: DT_UINT8\n" \
           "        shape: (-1, 28, 28, 1)" in serving
    assert "outputs['probabilities']" in serving and "outputs['classes']" in serving


def test_export_dir_that_is_a_file_is_a_clear_error(model, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(export.ExportError, match="is not a directory"):
        export.export_model(model, str(tmp_path / "file"))
