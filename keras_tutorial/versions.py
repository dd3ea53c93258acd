"""An export directory in TF Serving's layout: numbered versions, and opening one to use it.

`predict`, `evaluate` and `tflite` read versions through here, so they find, load and check a
version the same way, and turn each way it can be wrong into one line; `serve` says what to
pass for a directory without versions with them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from google.protobuf import message
import numpy as np
import tensorflow as tf

from keras_tutorial import data
from keras_tutorial.errors import UserError

METADATA_FILE = "export_info.json"
# Lines of a TensorFlow error around its reason.
_TF_FRAMING = ("Graph execution error:", "Detected at node", "<stack traces unavailable>")


class ExportError(UserError):
    """An export directory or version that cannot be used; the message is one line."""


def versions(export_dir: str) -> list[int]:
    """The version numbers taken in `export_dir`, oldest first: every numbered directory,
    complete or not, so that an export never picks a number already there."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if _numbered(name) and os.path.isdir(os.path.join(export_dir, name)))


def complete_versions(export_dir: str) -> dict[int, str]:
    """The versions that can be read, number -> directory: numbered directories holding
    `saved_model.pb`. An export writes one in a hidden staging directory and renames it into
    place, so a version never appears half-written."""
    return {int(name): os.path.join(export_dir, name) for name in sorted(os.listdir(export_dir))
            if is_version(os.path.join(export_dir, name))}


def _numbered(name: str) -> bool:
    return name.isascii() and name.isdigit()


def check_export_dir(export_dir: str, version_flag: bool = True) -> None:
    """Refuses a directory that does not exist or holds no complete version, saying which
    directory to pass when it is a version itself or a directory of export directories;
    `version_flag`: the command has --version."""
    if not os.path.isdir(export_dir):
        raise ExportError(f"export directory {export_dir} does not exist or is not a directory")
    if not complete_versions(export_dir):
        raise ExportError(no_versions(export_dir, version_flag))


def version_path(export_dir: str, version: int | None = None) -> str:
    """The directory of complete `version` under `export_dir`, by default of the newest."""
    check_export_dir(export_dir)
    found = sorted(complete_versions(export_dir))
    if version is None:
        return os.path.join(export_dir, str(found[-1]))
    if version not in found:
        raise ExportError(f"export directory {export_dir} has no version {version}, only "
                          f"{', '.join(map(str, found))}")
    return os.path.join(export_dir, str(version))


def is_version(path: str) -> bool:
    """Whether `path` is a complete version: a numbered directory holding saved_model.pb."""
    return (_numbered(os.path.basename(os.path.abspath(path)))
            and os.path.isfile(os.path.join(path, "saved_model.pb")))


def export_dirs_inside(directory: str) -> list[str]:
    """The names of the directories in `directory` that hold at least one complete version."""
    def holds_versions(path: str) -> bool:
        try:
            return any(is_version(os.path.join(path, name)) for name in os.listdir(path))
        except OSError:  # A file, or a directory this user cannot read.
            return False

    return sorted(name for name in os.listdir(directory)
                  if holds_versions(os.path.join(directory, name)))


def no_versions(export_dir: str, version_flag: bool) -> str:
    """Why `export_dir`, an existing directory, has no versions, and what to pass instead when
    it is a version itself or holds export directories; `version_flag`: the command has
    --version."""
    path = os.path.normpath(export_dir)
    if is_version(path):
        parent = os.path.normpath(os.path.join(path, os.pardir))
        number = os.path.basename(os.path.abspath(path))
        flags = f"--export_dir={parent}" + (f" --version={number}" if version_flag else "")
        return f"{path} is version {number} of {parent}: pass {flags}"
    inside = export_dirs_inside(path)
    if inside:
        return (f"{path} has no versions; it holds the export directories "
                f"{', '.join(inside)}: pass --export_dir={os.path.join(path, inside[0])}")
    return (f"export directory {export_dir} has no versions (numbered directories 1, 2, ... "
            "holding saved_model.pb, as an export writes them)")


def first_line(error: Exception) -> str:
    """An exception's first line of text, for one-line messages."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def tf_error_reason(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that says why, without the graph's framing around it:
    what `predict` reports for a file, and the server's message (`rest.from_tf_error`)."""
    lines = [line.strip() for line in (error.message or "").splitlines()]
    reasons = [line for line in lines
               if line and not line.startswith(_TF_FRAMING) and not line.startswith("[[")]
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", reasons[-1] if reasons else type(error).__name__)


def load_saved_model(path: str) -> tf.types.experimental.Trackable:
    """Loads an exported version, checking that it is a SavedModel with `serving_default`."""
    if not tf.saved_model.contains_saved_model(path):
        raise ExportError(f"{path} is not a SavedModel (it has no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError, message.DecodeError) as e:
        raise ExportError(f"{path}: cannot load the SavedModel ({first_line(e)})") from None
    if "serving_default" not in loaded.signatures:
        raise ExportError(f"{path} has no serving_default signature")
    return loaded


def read_info(path: str) -> dict:
    """The `export_info.json` of a version: what produced it; empty if it has none."""
    info_path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(info_path):
        return {}
    try:
        with open(info_path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{info_path}: cannot read it as JSON ({first_line(e)})") from None


@dataclasses.dataclass(frozen=True)
class Version:
    """An exported version, loaded: its directory, the SavedModel and its export_info.json.
    Keep it referenced while calling its signatures, which read the loaded variables."""

    path: str
    loaded: tf.types.experimental.Trackable
    info: dict

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names it was exported with, else those of its recorded dataset."""
        if "class_names" in self.info:
            return tuple(self.info["class_names"])
        return data.CLASS_NAMES.get(self.info.get("dataset"), data.CLASS_NAMES["mnist"])

    def signature(self, name: str) -> tf.types.experimental.ConcreteFunction:
        """One signature; an older export may lack `serve_images`."""
        if name not in self.loaded.signatures:
            raise ExportError(f"{self.path} has no {name} signature (an export older than "
                              "it): train and export the model again")
        return self.loaded.signatures[name]

    def classify(self, images: np.ndarray, batch_size: int = 1000) -> dict[str, np.ndarray]:
        """Runs `serving_default` over uint8 images [N,28,28,1] in batches; outputs as arrays."""
        serve = self.signature("serving_default")
        batches = [serve(images=tf.constant(images[start:start + batch_size]))
                   for start in range(0, len(images), batch_size)]
        return {key: np.concatenate([batch[key].numpy() for batch in batches])
                for key in ("probabilities", "classes")}

    @property
    def dataset(self) -> str | None:
        """The dataset it was trained on, as export_info.json records it."""
        return self.info.get("dataset")

    def split(self, split: str, dataset: str | None = None, data_dir: str | None = None,
              max_examples: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of a dataset split, by default of the dataset it was trained on.

        Its own dataset is read from the recorded `data_dir` unless another is given; that is
        the one training was given, relative to where it ran.
        """
        config = self.info.get("config", {})
        if split not in ("train", "test"):
            raise UserError(f"unknown split '{split}', expected train or test")
        dataset = dataset or self.dataset
        if dataset is None:
            raise UserError(f"{self.path} does not record its dataset: pass --dataset")
        if dataset == self.dataset and data_dir is None:
            data_dir = config.get("data_dir")
        arrays = data.load_arrays(dataset, data_dir, max_examples, seed=config.get("seed", 0))
        return ((arrays.x_train, arrays.y_train) if split == "train"
                else (arrays.x_test, arrays.y_test))


def open_version(export_dir: str, version: int | None = None) -> Version:
    """Loads `version` of `export_dir` (the newest by default) with what produced it."""
    path = version_path(export_dir, version)
    return Version(path, load_saved_model(path), read_info(path))
