import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import data, evaluation, versions
from keras_tutorial.errors import UserError


def test_confusion_matrix_counts_true_against_predicted():
    matrix = evaluation.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]),
                                       num_classes=3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_report_on_the_recorded_dataset(export_dir, bordered_arrays):
    evaluated = evaluation.evaluate(export_dir)  # Dataset and data_dir from export_info.json.
    np.testing.assert_array_equal(evaluated.labels, bordered_arrays.y_test)
    serve = tf.saved_model.load(os.path.join(export_dir, "1")).signatures["serving_default"]
    classes = serve(images=tf.constant(bordered_arrays.x_test))["classes"].numpy()
    result = evaluation.report(evaluated)
    assert result["examples"] == len(classes)
    assert result["accuracy"] == np.mean(classes == bordered_arrays.y_test)
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() == len(classes) and np.trace(matrix) == np.sum(classes == evaluated.labels)
    names = data.CLASS_NAMES["fashion_mnist"]
    assert list(result["per_class_accuracy"]) == list(names)
    for i, name in enumerate(names):
        mask = bordered_arrays.y_test == i
        assert result["per_class_accuracy"][name] == np.mean(classes[mask] == i)


def test_the_title_says_what_was_evaluated_on_what(export_dir, bordered_arrays):
    evaluated = evaluation.evaluate(export_dir)
    accuracy = np.mean(evaluated.predictions == bordered_arrays.y_test)
    assert evaluated.title == (f"{os.path.basename(export_dir)} version 1 on fashion_mnist "
                               f"test: accuracy {accuracy:.4f}")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "keras_tutorial.evaluate", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.slow
def test_cli_prints_and_writes_the_report_and_pictures_under_the_model_and_version(
        export_dir, tmp_path):
    result = _cli(f"--export_dir={export_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output_dir = os.path.join("runs", "evaluate", os.path.basename(export_dir), "1")
    assert result.stdout.strip().splitlines()[-1] == (
        f"Wrote {evaluation.EVALUATION_FILE}, {evaluation.CONFUSION_FILE} and "
        f"{evaluation.MISTAKES_FILE} in {output_dir}")
    with open(tmp_path / output_dir / evaluation.EVALUATION_FILE) as f:
        written = json.load(f)
    assert (written["model"], written["dataset"]) == (os.path.basename(export_dir),
                                                      "fashion_mnist")
    assert f"accuracy {written['accuracy']:.4f}" in result.stdout
    assert "Ankle boot" in result.stdout
    for name in (evaluation.CONFUSION_FILE, evaluation.MISTAKES_FILE):
        picture = tf.io.decode_png((tmp_path / output_dir / name).read_bytes())
        assert picture.shape[0] > 100 and picture.shape[1] > 500


def test_output_dir_patterns_name_the_model_and_version(export_dir, tmp_path):
    _, written = evaluation.run(export_dir, str(tmp_path / "{model}-v{version}"))
    assert written == str(tmp_path / f"{os.path.basename(export_dir)}-v1")
    assert sorted(os.listdir(written)) == [evaluation.CONFUSION_FILE, evaluation.EVALUATION_FILE,
                                           evaluation.MISTAKES_FILE]
    _, plain = evaluation.run(export_dir, str(tmp_path / "out"))
    assert plain == str(tmp_path / "out")


def test_bad_input_writes_nothing(tmp_path, export_dir):
    (tmp_path / "export").mkdir()
    with pytest.raises(versions.ExportError) as excinfo:
        evaluation.run(str(tmp_path / "export"), str(tmp_path / "out"))
    assert str(excinfo.value) == f"export directory {tmp_path / 'export'} has no versions " \
        "(numbered directories 1, 2, ... holding saved_model.pb, as an export writes them)"
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match="exists and is not a directory"):
        evaluation.run(export_dir, str(tmp_path / "file"))
    with pytest.raises(data.DataError, match="does not exist"):
        evaluation.run(export_dir, str(tmp_path / "out"), data_dir=str(tmp_path / "nowhere"),
                     dataset="mnist")
    assert sorted(os.listdir(tmp_path)) == ["export", "file"]
    assert (tmp_path / "file").read_text() == "mine"
