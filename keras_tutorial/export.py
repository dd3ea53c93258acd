"""SavedModel export in TF Serving's layout: `<export_dir>/<version>/`, one new version a run.

The `serving_default` signature takes raw uint8 images [None,28,28,1] named `images` and
returns `probabilities` [None,10] float32 and `classes` [None] int64.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_tutorial.data import IMAGE_SHAPE
from keras_tutorial.errors import UserError

SERVING_INPUT = "images"
METADATA_FILE = "export_info.json"


class ExportError(UserError):
    """An export directory that cannot be used; the message is one line meant for the user."""


def versions(export_dir: str) -> list[int]:
    """The integer versions already present in `export_dir`, oldest first."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(export_dir, name)))


def serving_function(model: keras.Model) -> tf.types.experimental.PolymorphicFunction:
    """Raw pixels in, class probabilities and the most likely class out."""

    @tf.function(input_signature=[
        tf.TensorSpec((None,) + IMAGE_SHAPE, tf.uint8, name=SERVING_INPUT)])
    def serve(images):
        probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    return serve


def export_model(model: keras.Model, export_dir: str, metadata: dict | None = None) -> str:
    """Writes the model as the next version under `export_dir` and returns that version's path.

    The version is written to a hidden temporary directory beside it and renamed into place,
    so a server watching `export_dir` never sees a half-written version.
    """
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ExportError(f"export directory {export_dir} exists and is not a directory")
    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=export_dir)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serving_function(model))
        archive.write_out(staging, verbose=False)
        if metadata is not None:
            with open(os.path.join(staging, METADATA_FILE), "w") as f:
                json.dump(metadata, f, indent=2, sort_keys=True)
        while True:
            existing = versions(export_dir)
            target = os.path.join(export_dir, str(existing[-1] + 1 if existing else 1))
            try:
                os.rename(staging, target)  # Fails if another run took this number meanwhile.
                return target
            except OSError:
                if not os.path.isdir(target):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
