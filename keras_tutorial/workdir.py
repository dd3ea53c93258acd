"""What a run keeps in its workdir: `run.json`, `history.json`, `summary.json`, TensorBoard logs.

Only the chief writes here; the backups that a rerun resumes from are the loop's (`backup/`).
"""

from __future__ import annotations

import dataclasses
import errno
import os

import tensorflow as tf

from keras_tutorial import files
from keras_tutorial.errors import UserError


@dataclasses.dataclass
class Workdir:
    """A run's directory: refuses another run's backup, keeps its history and summary."""

    path: str
    writes: bool = True

    def __post_init__(self) -> None:
        self._claimed = False
        files.make_directory(self.path)
        self._history = {record["epoch"]: record
                         for record in files.read_json(self._file("history.json"), [])}
        self._tensorboard = (tf.summary.create_file_writer(self._file("tensorboard"))
                             if self.writes else None)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def backup_dir(self) -> str:
        return self._file("backup")

    def claim(self, identity: dict) -> None:
        """Records the run's settings, or refuses a workdir that holds a different run."""
        recorded = files.read_json(self._file("run.json"))
        self._claimed = self.writes
        if recorded is None:
            if self.writes:
                files.write_json(self._file("run.json"), identity)
            return
        for name, value in identity.items():
            if recorded.get(name) != value:
                raise UserError(
                    f"workdir {self.path} holds a run with {name}={recorded.get(name)!r}, not "
                    f"{value!r}: rerun with the same flags to resume it, or pass another "
                    "--workdir")

    def finished_summary(self) -> dict | None:
        """The summary of a run that already finished here, if any."""
        return files.read_json(self._file("summary.json"))

    def record_epoch(self, record: dict) -> None:
        """Adds an epoch to history.json and TensorBoard. A workdir removed during the run is
        an error: the backup would silently make it anew, without the run's record."""
        self._history[record["epoch"]] = record
        if not self.writes:
            return
        if self._claimed and not os.path.isfile(self._file("run.json")):
            raise FileNotFoundError(errno.ENOENT, "removed during the run", self.path)
        files.write_json(self._file("history.json"), self.history)
        with self._tensorboard.as_default(step=record["epoch"]):
            for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if record.get(name) is not None:
                    tf.summary.scalar(name, record[name])

    @property
    def history(self) -> list[dict]:
        """Every epoch's record, this run's and those before a resume, in order."""
        return [self._history[epoch] for epoch in sorted(self._history)]

    def write_summary(self, summary: dict) -> str:
        path = self._file("summary.json")
        if self.writes:
            files.write_json(path, summary)
        return path
