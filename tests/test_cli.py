"""The entry layer: a UserError is one line and exit status 2, for every command."""

import subprocess
import sys

import pytest

from keras_tutorial import cli

COMMANDS = ["train", "predict", "evaluate", "tflite", "launch"]


def test_a_user_error_becomes_one_line_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.fail("data directory /nowhere does not exist")
    assert excinfo.value.code == cli.EXIT_USER_ERROR == 2
    assert capsys.readouterr().err == "error: data directory /nowhere does not exist\n"


def test_library_imports_leave_the_environment_alone():
    # TensorFlow sets a few variables of its own on import; the package adds none.
    script = ("import os, tensorflow, keras, tensorflow_datasets; before = dict(os.environ); "
              "from keras_tutorial import data, experiment, export, models, versions; "
              "assert dict(os.environ) == before, set(os.environ) ^ set(before)")
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_reports_bad_input_in_one_line(command, tmp_path):
    shown = subprocess.run([sys.executable, "-m", f"keras_tutorial.{command}", "--help"],
                           capture_output=True, text=True, timeout=120)
    assert "--" in shown.stdout and "Traceback" not in shown.stderr  # absl exits 1 on --help.
    if command == "launch":
        return  # It has no input of its own to be wrong: its workers report theirs.
    flags = {"train": ["--dataset=fashion_mnist", f"--data_dir={tmp_path}/none"],
             "predict": [f"--export_dir={tmp_path}/none", "--dataset=synthetic"],
             "evaluate": [f"--export_dir={tmp_path}/none"],
             "tflite": [f"--export_dir={tmp_path}/none"]}[command]
    result = subprocess.run([sys.executable, "-m", f"keras_tutorial.{command}", *flags],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert f"{tmp_path}/none" in result.stderr and "Traceback" not in result.stderr
