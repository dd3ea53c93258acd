import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import classify, data, versions
from conftest import idx_bytes


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "keras_tutorial.predict", *args],
                          capture_output=True, text=True, timeout=120)


def _expected(export_dir, images):
    serve = tf.saved_model.load(os.path.join(export_dir, "1")).signatures["serving_default"]
    return serve(images=tf.constant(images))["classes"].numpy()


def test_cli_classifies_png_jpeg_and_idx_files(tmp_path, export_dir, bordered_arrays):
    images = bordered_arrays.x_test[:6]
    paths = []
    for i, image in enumerate(images[:3]):
        paths.append(tmp_path / f"digit{i}.png")
        paths[-1].write_bytes(tf.io.encode_png(image).numpy())
    # A black-on-white colour photo at three times the size, as a phone might take it.
    photo = np.repeat(np.repeat(255 - images[3], 3, axis=0), 3, axis=1)
    paths.append(tmp_path / "photo.jpg")
    paths[-1].write_bytes(tf.io.encode_jpeg(np.repeat(photo, 3, axis=-1), quality=100).numpy())
    paths.append(tmp_path / "images-idx3-ubyte")
    paths[-1].write_bytes(idx_bytes(images[4:, ..., 0]))

    result = _cli(f"--export_dir={export_dir}", "--format=json", *map(str, paths))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert [row["file"] for row in rows] == [str(path) for path in paths[:4]] + [
        f"{paths[4]}[0]", f"{paths[4]}[1]"]
    expected = _expected(export_dir, images)
    assert [row["class"] for row in rows] == list(expected)
    names = data.CLASS_NAMES["fashion_mnist"]
    assert [row["class_name"] for row in rows] == [names[c] for c in expected]
    assert all(0.1 <= row["probability"] <= 1 for row in rows)


def test_table_lists_file_class_name_and_probability(export_dir, tmp_path, bordered_arrays):
    path = tmp_path / "shoe.png"
    path.write_bytes(tf.io.encode_png(bordered_arrays.x_test[0]).numpy())
    rows, errors = classify.classify(export_dir, [str(path)])
    assert errors == []
    lines = classify.format_table(rows).splitlines()
    assert lines[0].split() == ["file", "class", "probability"]
    assert lines[1].startswith(str(path)) and rows[0]["class_name"] in lines[1]
    assert lines[1].endswith(f"{rows[0]['probability']:.4f}")


def test_dataset_split(export_dir, bordered_idx_dir, bordered_arrays):
    rows = classify.classify(export_dir, [], dataset="fashion_mnist", data_dir=bordered_idx_dir,
                             max_examples=30).rows
    assert [row["file"] for row in rows[:2]] == ["fashion_mnist:test[0]", "fashion_mnist:test[1]"]
    np.testing.assert_array_equal([row["class"] for row in rows],
                                  _expected(export_dir, bordered_arrays.x_test[:30]))


def _write(path, content):
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("make_input, message", [
    (lambda d: _write(d / "empty.png", b""), "empty.png: is empty"),
    (lambda d: str(d), "is a directory, expected an image or IDX file"),
    (lambda d: str(d / "missing.png"), "missing.png: cannot read: No such file"),
    (lambda d: _write(d / "notes.txt", b"hello"), "notes.txt: not a PNG, JPEG, GIF or BMP image"),
    (lambda d: _write(d / "cut.png", tf.io.encode_png(np.zeros((28, 28, 1), np.uint8)).numpy()
                      [:40]), "cut.png: Invalid PNG. Failed to initialize decoder."),
    (lambda d: _write(d / "bomb.png", tf.io.encode_png(np.zeros((1, 30000, 1), np.uint8))
                      .numpy()), "bomb.png: Image of 30000x1 pixels is larger than serve_images "
     "accepts: at most 8192 pixels a side and 16777216 pixels in all"),
    (lambda d: _write(d / "labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8))),
     "IDX file of shape [5] does not hold images [N,28,28]"),
])
def test_bad_input_files_are_one_line_errors(export_dir, tmp_path, bordered_arrays,
                                              make_input, message):
    good = _write(tmp_path / "good.png", tf.io.encode_png(bordered_arrays.x_test[0]).numpy())
    rows, errors = classify.classify(export_dir, [good, make_input(tmp_path), good])
    assert [row["file"] for row in rows] == [good, good]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], errors


@pytest.mark.parametrize("break_it, version, message", [
    (lambda d: shutil.rmtree(d / "1"), None, "has no versions"),
    (lambda d: None, 7, "has no version 7, only 1"),
    (lambda d: (d / "1" / "saved_model.pb").unlink(), None, "has no versions"),
    (lambda d: (d / "1" / "saved_model.pb").write_bytes(b"garbage"), None,
     "cannot load the SavedModel"),
])
def test_unusable_export_dirs_are_one_line_errors(export_dir, tmp_path, bordered_arrays,
                                                  break_it, version, message):
    directory = shutil.copytree(export_dir, tmp_path / "export")
    break_it(directory)
    image = _write(tmp_path / "image.png", tf.io.encode_png(bordered_arrays.x_test[0]).numpy())
    with pytest.raises(versions.ExportError) as excinfo:
        classify.classify(str(directory), [image], version=version)
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_cli_error_is_one_line_on_stderr(export_dir, tmp_path):
    result = _cli(f"--export_dir={export_dir}", _write(tmp_path / "notes.txt", b"hello"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'notes.txt'}: not a PNG")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_classifies_the_good_files_and_reports_each_bad_one(export_dir, tmp_path,
                                                                 bordered_arrays):
    images = bordered_arrays.x_test[:2]
    good = [_write(tmp_path / f"good{i}.png", tf.io.encode_png(image).numpy())
            for i, image in enumerate(images)]
    notes = _write(tmp_path / "notes.txt", b"hello")
    bomb = _write(tmp_path / "bomb.png",
                  tf.io.encode_png(np.zeros((1, 30000, 1), np.uint8)).numpy())
    result = _cli(f"--export_dir={export_dir}", "--format=json", good[0], notes, bomb, good[1])
    assert result.returncode == 2, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert [row["file"] for row in rows] == good
    assert [row["class"] for row in rows] == list(_expected(export_dir, images))
    assert result.stderr.strip().splitlines()[-2:] == [
        f"error: {notes}: not a PNG, JPEG, GIF or BMP image, nor an IDX file "
        "(it starts with 68656c6c6f)",
        f"error: {bomb}: Image of 30000x1 pixels is larger than serve_images accepts: at most "
        "8192 pixels a side and 16777216 pixels in all"]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_says_which_export_directory_to_pass(export_dir, tmp_path):
    models = tmp_path / "saved_models"
    models.mkdir()
    for name in ("mlp", "cnn"):
        os.symlink(export_dir, models / name)
    (models / "README.md").write_text("not a model")
    image = _write(tmp_path / "image.png", tf.io.encode_png(np.zeros((28, 28, 1), np.uint8))
                   .numpy())
    version = _cli(f"--export_dir={models / 'cnn' / '1'}/", image)
    assert version.returncode == 2 and version.stdout == ""
    assert version.stderr.strip().splitlines()[-1] == (
        f"error: {models / 'cnn' / '1'} is version 1 of {models / 'cnn'}: pass "
        f"--export_dir={models / 'cnn'} --version=1")
    parent = _cli(f"--export_dir={models}", image)
    assert parent.returncode == 2 and parent.stdout == ""
    assert parent.stderr.strip().splitlines()[-1] == (
        f"error: {models} has no versions; it holds the export directories cnn, mlp: pass "
        f"--export_dir={models / 'cnn'}")


@pytest.mark.slow
def test_cli_reads_the_version_s_own_dataset_from_its_recorded_data_dir(export_dir,
                                                                        bordered_arrays):
    result = _cli(f"--export_dir={export_dir}", "--dataset=fashion_mnist", "--max_examples=5",
                  "--format=json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert [row["file"] for row in rows] == [f"fashion_mnist:test[{i}]" for i in range(5)]
    assert [row["class"] for row in rows] == list(_expected(export_dir,
                                                            bordered_arrays.x_test[:5]))
