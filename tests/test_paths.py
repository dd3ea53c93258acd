"""Every path a user gives that cannot be used ends the command in one line naming it, with
exit status 2 and no traceback, and leaves no half-written result.

A sample of each kind through the real commands: a path under a regular file, a file where a
directory is expected, a read-only file system (which root cannot write either), a full disk
(a tiny tmpfs) and a workdir removed during the run. Mounts need root: without, those skip.
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

TRAIN = ["--dataset=synthetic", "--max_examples=300", "--validation_size=50", "--epochs=1",
         "--noverbose"]
# What a write cut short would leave: staging directories, temporary JSON, checkpoint parts.
HALF_WRITTEN = (".staging-", ".tmp-", "_temp")


def _run(command, *flags, cwd):
    return subprocess.run([sys.executable, "-m", f"keras_tutorial.{command}", *map(str, flags)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def _one_line(result, line_start: str) -> str:
    """The error line of a command that failed as promised."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {line_start}"), last
    return last


def _half_written(directory) -> list[str]:
    return [os.path.join(root, name) for root, names, file_names in os.walk(directory)
            for name in names + file_names if any(mark in name for mark in HALF_WRITTEN)]


@pytest.fixture
def mount(tmp_path):
    """mount(name, options, source="tmpfs"): a file system mounted at tmp_path/name."""
    mounted = []

    def make(name: str, options: str, source: str = "tmpfs"):
        target = tmp_path / name
        target.mkdir()
        kind = ["--bind"] if source != "tmpfs" else ["-t", "tmpfs"]
        result = subprocess.run(["mount", *kind, "-o", options, str(source), str(target)],
                                capture_output=True, text=True) if shutil.which("mount") else None
        if result is None or result.returncode:
            pytest.skip(f"cannot mount here ({result.stderr.strip() if result else 'no mount'})")
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("command, flags, bad, reason", [
    ("train", TRAIN + ["--workdir={file}/w"], "{file}/w", ": Not a directory"),
    ("train", TRAIN + ["--workdir={file}"], "{file}", ": Not a directory"),
    ("evaluate", ["--export_dir={export}", "--output_dir={file}/out"], "{file}/out",
     ": Not a directory"),
    ("predict", ["--export_dir={export}", "{file}/digit.png"], "{file}/digit.png",
     ": cannot read: Not a directory"),
    ("predict", ["--export_dir={export}", "{tmp}"], "{tmp}", ": is a directory"),
])
def test_a_file_in_the_way_of_a_path(tmp_path, export_dir, command, flags, bad, reason):
    (tmp_path / "file").write_text("")
    names = {"file": tmp_path / "file", "export": export_dir, "tmp": tmp_path}
    result = _run(command, *[flag.format(**names) for flag in flags], cwd=tmp_path)
    assert reason in _one_line(result, bad.format(**names))


@pytest.mark.slow
def test_an_export_dir_under_a_file_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    result = _run("train", *TRAIN, f"--workdir={tmp_path}/run", f"--export_dir={tmp_path}/file/e",
                  cwd=tmp_path)
    assert _one_line(result, f"{tmp_path}/file/e: Not a directory")
    assert "Epoch 1:" not in result.stderr and not (tmp_path / "run" / "backup").exists()


@pytest.mark.slow
def test_a_read_only_file_system(tmp_path, mount, export_dir):
    read_only = mount("read_only", "ro,size=1m")
    _one_line(_run("train", *TRAIN, f"--workdir={read_only}/w", cwd=tmp_path),
              f"{read_only}/w: Read-only file system")
    _one_line(_run("evaluate", f"--export_dir={export_dir}", f"--output_dir={read_only}/out",
                   cwd=tmp_path), f"{read_only}/out: Read-only file system")
    exports = mount("exports", "ro", source=export_dir)
    _one_line(_run("tflite", f"--export_dir={exports}", "--max_examples=20", cwd=tmp_path),
              f"{exports}/tflite: Read-only file system")


@pytest.mark.slow
def test_a_full_disk_leaves_nothing_half_written(tmp_path, mount, export_dir):
    full = mount("full", "size=100k")
    # The backup of the first epoch does not fit: TensorFlow's checkpoint write fails.
    line = _one_line(_run("train", *TRAIN, f"--workdir={full}/w", cwd=tmp_path), f"{full}/w/")
    assert line.endswith(": No space left on device")
    assert os.listdir(full / "w" / "backup") == []
    # The SavedModel does not fit: the version is never renamed into place.
    line = _one_line(_run("train", *TRAIN, f"--workdir={tmp_path}/w", f"--export_dir={full}/e",
                          cwd=tmp_path), f"{full}/e/")
    assert line.endswith(": No space left on device") and os.listdir(full / "e") == []
    # The pictures do not fit: none of the three outputs is moved into place.
    small = mount("small", "size=32k")
    line = _one_line(_run("evaluate", f"--export_dir={export_dir}", f"--output_dir={small}/out",
                          cwd=tmp_path), f"{small}/out/")
    assert line.endswith(": No space left on device") and os.listdir(small / "out") == []
    assert _half_written(full) == _half_written(small) == []


@pytest.mark.slow
def test_a_workdir_removed_during_the_run(tmp_path):
    workdir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_tutorial.train", "--dataset=synthetic",
         "--max_examples=2000", "--validation_size=100", "--epochs=40", "--noverbose",
         "--noexport", f"--workdir={workdir}"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (workdir / "history.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(workdir)
    _, stderr = process.communicate(timeout=300)
    result = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
    _one_line(result, f"{workdir}: removed during the run")
    assert not (workdir / "summary.json").exists() and _half_written(tmp_path) == []
