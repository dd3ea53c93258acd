"""A run's workdir: one run per directory, its history kept across a resume."""

import json
import os
import shutil

import pytest

from keras_tutorial.errors import UserError
from keras_tutorial.workdir import Workdir


def _record(epoch):
    return {"epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.5, "val_loss": None,
            "val_accuracy": None}


def test_a_workdir_refuses_a_different_run(tmp_path):
    Workdir(str(tmp_path)).claim({"model": "mlp", "seed": 0})
    Workdir(str(tmp_path)).claim({"model": "mlp", "seed": 0})
    with pytest.raises(UserError, match="holds a run with seed=0, not 1"):
        Workdir(str(tmp_path)).claim({"model": "mlp", "seed": 1})


def test_history_survives_a_resume_and_stays_in_order(tmp_path):
    first = Workdir(str(tmp_path))
    first.record_epoch(_record(1))
    first.record_epoch(_record(2))
    resumed = Workdir(str(tmp_path))
    resumed.record_epoch(_record(3))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    with open(tmp_path / "history.json") as f:
        assert [r["epoch"] for r in json.load(f)] == [1, 2, 3]
    assert (tmp_path / "tensorboard").is_dir()


def test_a_worker_that_is_not_the_chief_writes_nothing(tmp_path):
    worker = Workdir(str(tmp_path), writes=False)
    worker.claim({"model": "mlp"})
    worker.record_epoch(_record(1))
    worker.write_summary({"test_accuracy": 0.9})
    assert list(tmp_path.iterdir()) == []
    assert worker.finished_summary() is None and len(worker.history) == 1


def test_a_workdir_removed_during_the_run_is_an_error_naming_it(tmp_path):
    workdir = Workdir(str(tmp_path / "run"))
    workdir.claim({"model": "mlp"})
    workdir.record_epoch(_record(1))
    shutil.rmtree(tmp_path / "run")
    os.makedirs(tmp_path / "run" / "backup")  # As the next backup makes it anew.
    with pytest.raises(FileNotFoundError) as excinfo:
        workdir.record_epoch(_record(2))
    assert (excinfo.value.filename, excinfo.value.strerror) == (
        str(tmp_path / "run"), "removed during the run")
