"""The entry layer: a UserError is one line and exit status 2, for every command; flags are
checked before TensorFlow loads; help lists each command's flags; the console is quiet."""

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from keras_tutorial import cli

COMMANDS = ["train", "predict", "evaluate", "tflite", "launch", "serve"]


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


# The flags each command's --help must list: its own and those it shares through cli.py.
HELP_FLAGS = {
    "train": ["--model", "--dataset", "--data_dir", "--epochs", "--batch_size", "--workdir",
              "--export_dir", "--strategy", "--verbose"],
    "predict": ["--export_dir", "--version", "--dataset", "--data_dir", "--max_examples",
                "--split", "--format"],
    "evaluate": ["--export_dir", "--version", "--dataset", "--data_dir", "--max_examples",
                 "--split", "--output_dir"],
    "tflite": ["--export_dir", "--version", "--dataset", "--data_dir", "--max_examples"],
    "launch": ["--workers", "--timeout", "--grace_seconds"],
    "serve": ["--export_dir", "--host", "--port", "--grpc_port", "--max_request_bytes",
              "--allowed_hosts", "--cors_origin", "--enable_batching"],
}


def _command(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          **options)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_commands_flags_with_their_defaults_and_exits_0(command):
    shown = _command("-m", f"keras_tutorial.{command}", "--help")
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr[-2000:]
    for flag in HELP_FLAGS[command]:
        assert re.search(rf"^  {flag}: |^  --\[no\]{flag[2:]}: ", shown.stdout, re.MULTILINE), flag
    assert "(default: " in shown.stdout and "--helpfull" in shown.stdout
    full = _command("-m", f"keras_tutorial.{command}", "--helpfull")
    assert full.returncode == 0 and "--verbosity" in full.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_flag_is_one_line_before_tensorflow_loads(command):
    # Whether TensorFlow was imported, said as the process exits.
    script = ("import atexit, runpy, sys; atexit.register(lambda: print('tensorflow' in "
              f"sys.modules)); sys.argv = ['{command}', '--epohcs=3']; "
              f"runpy.run_module('keras_tutorial.{command}', run_name='__main__')")
    result = _command("-c", script)
    assert result.returncode == 2
    line, = result.stderr.splitlines()  # train adds "Did you mean: epochs ?".
    assert line.startswith("error: Unknown command line flag 'epohcs'")
    assert result.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_reports_bad_input_in_one_line(command, tmp_path):
    if command == "launch":
        return  # It has no input of its own to be wrong: its workers report theirs.
    flags = {"train": ["--dataset=fashion_mnist", f"--data_dir={tmp_path}/none"],
             "predict": [f"--export_dir={tmp_path}/none", "--dataset=synthetic"],
             "evaluate": [f"--export_dir={tmp_path}/none"],
             "tflite": [f"--export_dir={tmp_path}/none"],
             "serve": [f"--export_dir={tmp_path}/none", "--port=0"]}[command]
    result = _command("-m", f"keras_tutorial.{command}", *flags, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert f"{tmp_path}/none" in result.stderr and "Traceback" not in result.stderr


def test_predict_with_nothing_to_classify_says_so_in_one_line():
    result = _command("-m", "keras_tutorial.predict", "--export_dir=saved_models/cnn")
    assert result.returncode == 2
    assert result.stderr == ("error: nothing to classify: pass image or IDX files after the "
                             "flags, or --dataset\n")


@pytest.mark.parametrize("command", COMMANDS + ["configurations"])
def test_commands_import_neither_tensorflow_nor_matplotlib_until_their_flags_are_good(command):
    # Keras imports matplotlib for plots no command draws: 0.5-0.7 s of every start-up; and
    # TensorFlow takes seconds, which a mistyped flag should not wait for.
    script = (f"import sys, keras_tutorial.{command}; "
              "print(' '.join(m for m in ('matplotlib', 'keras', 'tensorflow') "
              "if m in sys.modules) or '-')")
    result = _command("-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = {"configurations": "keras tensorflow"}  # A developer's tool, run on a GPU.
    assert result.stdout.strip().splitlines()[-1] == expected.get(command, "-")


@pytest.mark.slow
def test_a_command_is_quiet_by_default_and_tells_everything_when_asked(tmp_path, export_dir):
    (tmp_path / "digit.png").write_bytes(tf.io.encode_png(tf.zeros([28, 28, 1], tf.uint8)).numpy())
    run = ["-m", "keras_tutorial.predict", f"--export_dir={export_dir}", "digit.png"]
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = _command(*run, cwd=tmp_path, env=env)
    assert quiet.returncode == 0 and "digit.png" in quiet.stdout, quiet.stderr[-2000:]
    assert quiet.stderr == "", quiet.stderr[-2000:]
    told = _command(*run, "--verbosity=1", cwd=tmp_path, env=env)
    assert told.returncode == 0
    assert re.search(r"^[IWE]\d{4} ", told.stderr, re.MULTILINE), told.stderr[-2000:]


INTERRUPTED = textwrap.dedent("""
    import signal, sys
    from keras_tutorial import cli
    from keras_tutorial.errors import Interrupted
    def main(argv):
        if sys.argv[1] == "term":
            raise Interrupted("interrupted at epoch 4, step 256: run the same command to resume",
                              signal.SIGTERM)
        raise KeyboardInterrupt
    cli.run(main, lambda: None)
""")


def test_an_interrupt_is_one_line_and_the_shells_exit_status():
    term = _command("-c", INTERRUPTED, "term")
    assert (term.returncode, term.stderr) == (
        128 + signal.SIGTERM, "interrupted at epoch 4, step 256: run the same command to resume\n")
    ctrl_c = _command("-c", INTERRUPTED, "int")
    assert (ctrl_c.returncode, ctrl_c.stderr) == (130, "interrupted\n")


CHATTER = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
           "STDERR\n"
           "I0000 00:00:1796276230.923707   21873 port.cc:153] oneDNN custom operations are on.\n"
           "I0000 00:00:1796276234.023186   21873 cpu_feature_guard.cc:227] This TensorFlow binary"
           " is optimized\nTo enable the following instructions: AVX2 FMA, rebuild TensorFlow.\n")
REAL_ERROR = "E0000 00:00:1796275628.768471   16819 op_kernel.cc:1857] a real error\n"
NO_GPU = "E0000 00:00:1796275628.768471   16819 cuda_platform.cc:52] failed call to cuInit\n"


def _import_fake_tensorflow(tmp_path, body, **env):
    # A stand-in TensorFlow whose import writes native log lines to file descriptor 2; the
    # script prints whether matplotlib was imported, and from where TensorFlow was.
    (tmp_path / "tensorflow").mkdir(exist_ok=True)
    # Its device probe writes the error of a machine without a GPU.
    (tmp_path / "tensorflow" / "__init__.py").write_text(
        f"import os, types\nos.write(2, {(CHATTER + REAL_ERROR).encode()!r})\n"
        f"config = types.SimpleNamespace(list_physical_devices=lambda: os.write(2, "
        f"{NO_GPU.encode()!r}))\n{body}\n")
    script = ("import sys; from keras_tutorial import cli; cli.import_tensorflow(); "
              "print('matplotlib' in sys.modules, sys.modules['tensorflow'].__file__)")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path), **env})


def _stand_in(tmp_path):
    return str(tmp_path / "tensorflow" / "__init__.py")


def test_tensorflow_import_keeps_only_native_errors_that_matter(tmp_path):
    result = _import_fake_tensorflow(tmp_path, "")
    assert result.returncode == 0 and result.stdout.split() == ["False", _stand_in(tmp_path)]
    assert result.stderr == REAL_ERROR


def test_tensorflow_import_shows_everything_when_asked_or_when_it_fails(tmp_path):
    asked = _import_fake_tensorflow(tmp_path, "", TF_CPP_MIN_LOG_LEVEL="0")
    assert asked.returncode == 0 and asked.stderr == CHATTER + REAL_ERROR + NO_GPU
    failed = _import_fake_tensorflow(tmp_path, "raise RuntimeError('broken install')")
    assert failed.returncode == 1
    assert failed.stderr.startswith(CHATTER + REAL_ERROR)
    assert failed.stderr.strip().splitlines()[-1] == "RuntimeError: broken install"


def test_a_tensorflow_that_needs_matplotlib_still_imports(tmp_path):
    # A stand-in for a Keras that imports matplotlib unconditionally.
    result = _import_fake_tensorflow(tmp_path, "import matplotlib")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", _stand_in(tmp_path)]


@pytest.mark.slow
def test_a_flag_absl_refuses_is_one_line_and_exit_status_2():
    result = subprocess.run([sys.executable, "-m", "keras_tutorial.evaluate", "--version=0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: flag --version=0: ")


@pytest.mark.parametrize("error, line", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "w/history.json"),
     "w/history.json: No such file or directory"),
    (OSError(errno.EXDEV, os.strerror(errno.EXDEV), "e/.staging", None, "e/1"),
     "e/.staging -> e/1: Invalid cross-device link"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
    # TensorFlow's file errors, as checkpoint, SavedModel and directory writes raise them.
    (tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2_dtypes_9_"
                                      "device_/job:localhost/replica:0/task:0/device:CPU:0}} "
                                      "w/backup/ckpt-1_temp/part-0; No space left on device "
                                      "[Op:SaveV2]"),
     "w/backup/ckpt-1_temp/part-0: No space left on device"),
    (tf.errors.NotFoundError(None, None, "Failed to create a directory: f/w/backup; Not a "
                                         "directory"), "f/w/backup: Not a directory"),
    (tf.errors.PermissionDeniedError(None, None, "e/variables; Permission denied"),
     "e/variables: Permission denied"),
    (tf.errors.FailedPreconditionError(None, None, "ro/w/tensorboard; Read-only file system"),
     "ro/w/tensorboard: Read-only file system"),
])
def test_errors_about_files_become_one_line_naming_the_path(error, line):
    assert cli.file_error(error) == line


@pytest.mark.parametrize("error", [
    ValueError("a bug"),
    tf.errors.NotFoundError(None, None, "Could not find device for node: {{node Qr}} = Qr"),
    tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[9]"),
    tf.errors.FailedPreconditionError(None, None, "Could not find variable dense/kernel; "
                                                  "Container localhost does not exist."),
])
def test_other_errors_keep_their_traceback(error):
    assert cli.file_error(error) is None


COMMAND = textwrap.dedent("""
    import sys
    from keras_tutorial import cli
    def main(argv):
        if sys.argv[1] == "bug":
            return 1 / 0
        with open(sys.argv[1], "w") as f:
            f.write("result")
    cli.run(main, lambda: None)
""")


def test_a_path_error_in_any_command_is_one_line_and_exit_status_2(tmp_path):
    (tmp_path / "file").write_text("")
    for path, reason in ((tmp_path / "file" / "out", "Not a directory"),
                         (tmp_path / "gone" / "out", "No such file or directory"),
                         (tmp_path, "Is a directory")):
        result = subprocess.run([sys.executable, "-c", COMMAND, str(path)], capture_output=True,
                                text=True, timeout=60)
        assert (result.returncode, result.stderr) == (2, f"error: {path}: {reason}\n")
    bug = subprocess.run([sys.executable, "-c", COMMAND, "bug"], capture_output=True, text=True,
                         timeout=60)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "ZeroDivisionError" in bug.stderr


def test_one_entry_point_runs_every_command():
    # `pip install` puts the console script beside the interpreter.
    script = os.path.join(os.path.dirname(sys.executable), "keras-tutorial")
    assert os.path.exists(script), "reinstall the package: pip install -e '.[test,serve]'"
    for program in ([script], [sys.executable, "-m", "keras_tutorial"]):
        listed = subprocess.run([*program, "--help"], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0
        assert all(f"  {command} " in listed.stdout for command in COMMANDS), listed.stdout
        shown = subprocess.run([*program, "predict", "--help"], capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0 and "  --export_dir: " in shown.stdout
        wrong = subprocess.run([*program, "trian"], capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 2
        assert wrong.stderr == ("error: unknown command 'trian', expected one of train, predict, "
                                "evaluate, tflite, serve, launch\n")
