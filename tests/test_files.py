"""Writes that readers never see half-done."""

import errno
import json
import os
import socket
import stat
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
        assert os.path.basename(staging).startswith(
            f"{files.STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-")
        (open(os.path.join(staging, "part"), "w")).close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        with files.staging_directory(str(tmp_path)):
            raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == []


def _dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_only_staging_directories_of_this_host_s_dead_writers_are_swept(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    swept = files.staging_name(host, dead, "0a")
    kept = [files.staging_name(host, os.getpid(), "0b"),  # Alive.
            files.staging_name(f"other-{host}", dead, "0c"),  # Its pid means nothing here.
            files.staging_name("worker-1.example", dead, "0d"),
            f"{files.STAGING_PREFIX}{dead}-x1y2z3", "1", ".staging-notapid"]
    for name in [swept, *kept]:
        (tmp_path / name).mkdir()
    files.remove_abandoned_staging(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def _umask() -> int:
    """The process's umask, read without setting it."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)


def test_staging_directories_take_the_umask_s_permissions_without_changing_it(
        tmp_path, monkeypatch):
    def changed(mask):
        raise AssertionError(f"os.umask({mask:o}) changes it for every thread of the process")

    monkeypatch.setattr(os, "umask", changed)
    with files.staging_directory(str(tmp_path)) as staging:
        assert stat.S_IMODE(os.stat(staging).st_mode) == 0o777 & ~_umask()


def test_a_failed_json_write_names_its_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "summary.json")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # As write() raises it.

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OSError) as excinfo:
        files.write_json(path, {"a": 1})
    assert (excinfo.value.errno, excinfo.value.filename) == (errno.ENOSPC, path)
    assert os.listdir(tmp_path) == []


def test_a_file_in_place_of_a_directory_is_an_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    for path in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(NotADirectoryError) as excinfo:
            files.make_directory(str(path))
        assert excinfo.value.filename == str(path)
    files.make_directory(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()


def test_written_json_ends_with_a_newline(tmp_path):
    files.write_json(str(tmp_path / "a.json"), [1])
    text = (tmp_path / "a.json").read_text()
    assert text.endswith("\n") and json.loads(text) == [1]
