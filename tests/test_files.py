"""Writes that readers never see half-done."""

import json
import os
import subprocess

import pytest

from keras_tutorial import files


def test_json_is_replaced_whole_and_read_back(tmp_path):
    path = str(tmp_path / "summary.json")
    assert files.read_json(path, default=[]) == []
    files.write_json(path, {"a": 1})
    files.write_json(path, {"a": 2})
    assert files.read_json(path) == {"a": 2}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_staging_directory_is_removed_unless_renamed(tmp_path):
    with files.staging_directory(str(tmp_path)) as staging:
        assert os.path.basename(staging).startswith(f"{files.STAGING_PREFIX}{os.getpid()}-")
        (open(os.path.join(staging, "part"), "w")).close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        with files.staging_directory(str(tmp_path)):
            raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == []


def test_only_staging_directories_of_dead_writers_are_swept(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"{files.STAGING_PREFIX}{gone.pid}-x"
    alive = tmp_path / f"{files.STAGING_PREFIX}{os.getpid()}-y"
    for directory in (dead, alive, tmp_path / "1", tmp_path / ".staging-notapid"):
        directory.mkdir()
    files.remove_abandoned_staging(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, "1", ".staging-notapid"])


def test_written_json_ends_with_a_newline(tmp_path):
    files.write_json(str(tmp_path / "a.json"), [1])
    text = (tmp_path / "a.json").read_text()
    assert text.endswith("\n") and json.loads(text) == [1]
