"""Finding and opening a version: the newest by default, every way it can be wrong a line."""

import os
import shutil

import numpy as np
import pytest

from keras_tutorial import data, versions


def test_the_newest_version_is_the_default(export_dir, tmp_path):
    directory = shutil.copytree(export_dir, tmp_path / "export")
    shutil.copytree(directory / "1", directory / "7")
    (directory / "notes").mkdir()
    assert versions.versions(str(directory)) == [1, 7]
    assert versions.version_path(str(directory)) == str(directory / "7")
    assert versions.version_path(str(directory), 1) == str(directory / "1")


@pytest.mark.parametrize("layout, version, message", [
    (None, None, "does not exist or is not a directory"),
    ([], None, "has no versions"),
    (["1"], 3, "has no versions"),  # A numbered directory without saved_model.pb is none.
])
def test_a_bad_export_directory_is_one_line(tmp_path, layout, version, message):
    directory = tmp_path / "export"
    if layout is not None:
        directory.mkdir()
        for name in layout:
            (directory / name).mkdir()
    with pytest.raises(versions.ExportError, match=message) as excinfo:
        versions.open_version(str(directory), version)
    assert "\n" not in str(excinfo.value)


def test_a_version_or_a_directory_of_export_directories_says_what_to_pass(export_dir,
                                                                         tmp_path):
    models = tmp_path / "saved_models"
    models.mkdir()
    for name in ("mlp", "cnn"):
        shutil.copytree(export_dir, models / name)
    (models / "lstm").mkdir()  # Nothing exported yet: not an export directory.
    (models / "README.md").write_text("not a model")
    with pytest.raises(versions.ExportError) as excinfo:
        versions.open_version(str(models / "cnn" / "1"))
    assert str(excinfo.value) == (f"{models / 'cnn' / '1'} is version 1 of {models / 'cnn'}: "
                                  f"pass --export_dir={models / 'cnn'} --version=1")
    with pytest.raises(versions.ExportError) as excinfo:
        versions.open_version(str(models))
    assert str(excinfo.value) == (f"{models} has no versions; it holds the export directories "
                                  f"cnn, mlp: pass --export_dir={models / 'cnn'}")
    assert versions.no_versions(str(models / "mlp" / "1"), version_flag=False) == (
        f"{models / 'mlp' / '1'} is version 1 of {models / 'mlp'}: "
        f"pass --export_dir={models / 'mlp'}")


def test_an_opened_version_knows_its_classes_and_its_data(export_dir, bordered_arrays):
    version = versions.open_version(export_dir)
    assert version.class_names == data.CLASS_NAMES["fashion_mnist"]
    images, labels = version.split("test")
    np.testing.assert_array_equal(images, bordered_arrays.x_test)
    # Its own dataset, named, is still read from where training read it.
    np.testing.assert_array_equal(version.split("test", "fashion_mnist")[1], labels)
    outputs = version.classify(images, batch_size=64)
    assert outputs["probabilities"].shape == (len(labels), data.NUM_CLASSES)
    assert np.mean(outputs["classes"] == labels) > 0.6
    with pytest.raises(versions.ExportError, match="has no serve_text signature"):
        version.signature("serve_text")


def test_an_unreadable_export_info_is_one_line(export_dir, tmp_path):
    directory = shutil.copytree(export_dir, tmp_path / "export")
    with open(os.path.join(directory, "1", versions.METADATA_FILE), "w") as f:
        f.write("{broken")
    with pytest.raises(versions.ExportError, match="cannot read it as JSON"):
        versions.open_version(str(directory))
