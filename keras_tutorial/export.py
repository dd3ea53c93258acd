"""SavedModel export in TF Serving's layout, `<export_dir>/<version>/`, and TFLite conversion.

Every version has two signatures that return the same outputs, `probabilities` [None,10]
float32, `classes` [None] int64 and `class_names` [None] string:

- `serving_default` takes raw uint8 pixels `images` [None,28,28,1], white on black, 0..255;
- `serve_images` takes `image_bytes` [None] string, encoded PNG, JPEG, GIF or BMP files of any
  size, colour or gray, and turns them into such pixels inside the graph (`decode_images`).

`python -m keras_tutorial.export --export_dir=DIR` converts a version to TFLite, float and
dynamic-range quantised, and checks both against the SavedModel on the test split.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Iterator, NamedTuple
import warnings

from absl import app, flags
from google.protobuf import message
import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert_phase import ConverterError

import keras_tutorial
from keras_tutorial import data, models
from keras_tutorial.errors import UserError

SERVING_INPUT = "images"
IMAGE_BYTES_INPUT = "image_bytes"
SIGNATURES = ("serving_default", "serve_images")
METADATA_FILE = "export_info.json"
STAGING_PREFIX = ".staging-"
TFLITE_VARIANTS = ("float", "dynamic_range")

_HEIGHT, _WIDTH, _ = data.IMAGE_SHAPE


class ExportError(UserError):
    """An export directory or version that cannot be used; the message is one line."""


def versions(export_dir: str) -> list[int]:
    """The integer versions already present in `export_dir`, oldest first."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(export_dir, name)))


def decode_images(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded image files [N] -> uint8 pixels [N,28,28,1] as the models were trained on them.

    Each image becomes gray, is inverted if its border is bright (dark ink on white paper, the
    opposite of MNIST's white on black), is padded to a square with the background, and is
    resized to 28x28 by averaging areas, as Fashion-MNIST's own images were made. The pixels
    stay in the 0..255 range: the model rescales them itself.
    """

    def decode_one(encoded: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        gray = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))
        border = tf.concat([tf.reshape(gray[0], [-1]), tf.reshape(gray[-1], [-1]),
                            tf.reshape(gray[:, 0], [-1]), tf.reshape(gray[:, -1], [-1])], 0)
        gray = tf.cond(tf.reduce_mean(border) > 127.5, lambda: 255.0 - gray, lambda: gray)
        size = tf.reduce_max(tf.shape(gray)[:2])
        square = tf.image.resize_with_crop_or_pad(gray, size, size)
        resized = tf.image.resize(square, [_HEIGHT, _WIDTH], method="area")
        return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)

    return tf.map_fn(decode_one, image_bytes,
                     fn_output_signature=tf.TensorSpec(data.IMAGE_SHAPE, tf.uint8))


def serving_functions(model: keras.Model, class_names: tuple[str, ...],
                      ) -> dict[str, tf.types.experimental.PolymorphicFunction]:
    """The two signatures: raw pixels in, or encoded image files in; the same outputs."""
    names = tf.constant(class_names)

    def classify(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # Checked in the graph: a server feeding a bad batch gets this error, not a wrong answer.
        images = tf.ensure_shape(images, (None,) + data.IMAGE_SHAPE)
        probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
        classes = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "classes": classes,
                "class_names": tf.gather(names, classes)}

    # Without autograph: the code uses TF's control flow explicitly, and tracing then never
    # re-reads this file, which a run that imported it before an edit would mistrace.
    @tf.function(input_signature=[
        tf.TensorSpec((None,) + data.IMAGE_SHAPE, tf.uint8, name=SERVING_INPUT)],
        autograph=False)
    def serving_default(images):
        return classify(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)],
                 autograph=False)
    def serve_images(image_bytes):
        return classify(decode_images(image_bytes))

    return {"serving_default": serving_default, "serve_images": serve_images}


def serving_copy(model: keras.Model) -> keras.Model:
    """The model with its recurrent layers unrolled and the same weights, for export.

    An unrolled loop converts to TFLite's builtin ops, and its graph runs on any device: a
    rolled LSTM traced on a GPU would bake cuDNN-only kernels into the SavedModel. The LSTM
    runs each batch as one chain: slices suit the training machine's cores, and would put the
    unrolled steps into a TFLite file once more per slice (the dynamic-range file twice as big).
    """
    if not any(isinstance(layer, keras.layers.RNN) for layer in model.layers):
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.RNN):
            config["unroll"] = True
        if isinstance(layer, models.BatchParallelLSTM):
            config["slices"] = 1
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _remove_abandoned_staging(export_dir: str) -> None:
    """Deletes staging directories whose exporting process is gone (killed mid-write)."""
    for name in os.listdir(export_dir):
        pid = name[len(STAGING_PREFIX):].split("-")[0]
        if not (name.startswith(STAGING_PREFIX) and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
        except PermissionError:
            pass  # Another user's process, still running.


def _directory_mode() -> int:
    """0o777 less the umask: what os.makedirs gives, where mkdtemp gives the owner alone 0o700
    (a server running as another user could not read the version)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def _staging_directory(parent: str) -> Iterator[str]:
    """A hidden directory in `parent` to write into and rename into place, so that readers
    never see a half-written result; removed on the way out if it was not renamed."""
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent)
    try:
        os.chmod(staging, _directory_mode())
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_model(model: keras.Model, export_dir: str, metadata: dict | None = None,
                 class_names: tuple[str, ...] | None = None) -> str:
    """Writes the model as the next version under `export_dir` and returns that version's path.

    The version is written to a hidden staging directory beside it and renamed into place,
    so a server watching `export_dir` never sees a half-written version; an existing version
    is never overwritten. `export_info.json` inside records `metadata` and the class names.
    """
    class_names = tuple(class_names or data.CLASS_NAMES["mnist"])
    if len(class_names) != data.NUM_CLASSES:
        raise ExportError(f"expected {data.NUM_CLASSES} class names, got {len(class_names)}")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ExportError(f"export directory {export_dir} exists and is not a directory")
    os.makedirs(export_dir, exist_ok=True)
    _remove_abandoned_staging(export_dir)
    with _staging_directory(export_dir) as staging:
        model = serving_copy(model)
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name, function in serving_functions(model, class_names).items():
            archive.add_endpoint(name, function)
        archive.write_out(staging, verbose=False)
        info = {**(metadata or {}), "class_names": list(class_names),
                "signatures": list(SIGNATURES),
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "keras_tutorial_version": keras_tutorial.__version__,
                "tensorflow_version": tf.__version__, "keras_version": keras.__version__}
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        while True:
            existing = versions(export_dir)
            target = os.path.join(export_dir, str(existing[-1] + 1 if existing else 1))
            try:
                os.rename(staging, target)  # Fails if another run took this number meanwhile.
                return target
            except OSError:
                if not os.path.isdir(target):
                    raise


def version_path(export_dir: str, version: int | None = None) -> str:
    """The directory of `version` under `export_dir`, by default of the newest version."""
    if not os.path.isdir(export_dir):
        raise ExportError(f"export directory {export_dir} does not exist or is not a directory")
    found = versions(export_dir)
    if not found:
        raise ExportError(f"export directory {export_dir} has no versions (numbered "
                          "directories 1, 2, ... that an export writes)")
    if version is None:
        return os.path.join(export_dir, str(found[-1]))
    if version not in found:
        raise ExportError(f"export directory {export_dir} has no version {version}, only "
                          f"{', '.join(map(str, found))}")
    return os.path.join(export_dir, str(version))


def load_version(path: str) -> tf.types.experimental.Trackable:
    """Loads an exported version, checking that it is a SavedModel with `serving_default`."""
    if not tf.saved_model.contains_saved_model(path):
        raise ExportError(f"{path} is not a SavedModel (it has no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError, message.DecodeError) as e:
        raise ExportError(f"{path}: cannot load the SavedModel ({_first_line(e)})") from None
    if "serving_default" not in loaded.signatures:
        raise ExportError(f"{path} has no serving_default signature")
    return loaded


class Version(NamedTuple):
    """An exported version, loaded: its directory, the SavedModel and its export_info.json.
    Keep it referenced while calling its signatures, which read the loaded variables."""

    path: str
    loaded: tf.types.experimental.Trackable
    info: dict


def open_version(export_dir: str, version: int | None = None) -> Version:
    """Loads `version` of `export_dir` (the newest by default) with what produced it."""
    path = version_path(export_dir, version)
    return Version(path, load_version(path), read_info(path))


def signature(loaded: tf.types.experimental.Trackable, name: str, path: str,
              ) -> tf.types.experimental.ConcreteFunction:
    """One signature of a loaded version; an older export may lack `serve_images`."""
    if name not in loaded.signatures:
        raise ExportError(f"{path} has no {name} signature (an export older than it): "
                          "train and export the model again")
    return loaded.signatures[name]


def read_info(path: str) -> dict:
    """The `export_info.json` of a version: what produced it; empty if it has none."""
    info_path = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(info_path):
        return {}
    try:
        with open(info_path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{info_path}: cannot read it as JSON ({_first_line(e)})") from None


def class_names(info: dict) -> tuple[str, ...]:
    """The class names a version was exported with, else those of its recorded dataset."""
    if "class_names" in info:
        return tuple(info["class_names"])
    return data.CLASS_NAMES.get(info.get("dataset"), data.CLASS_NAMES["mnist"])


def load_split(info: dict, split: str, dataset: str | None = None, data_dir: str | None = None,
               max_examples: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a dataset split, by default of the dataset the version was trained on.

    The recorded `data_dir` is the one training was given, relative to where it ran.
    """
    config = info.get("config", {})
    if split not in ("train", "test"):
        raise UserError(f"unknown split '{split}', expected train or test")
    if dataset is None:
        dataset, data_dir = info.get("dataset"), data_dir or config.get("data_dir")
    if dataset is None:
        raise UserError("the version does not record its dataset: pass --dataset")
    arrays = data.load_arrays(dataset, data_dir, max_examples, seed=config.get("seed", 0))
    return (arrays.x_train, arrays.y_train) if split == "train" else (arrays.x_test, arrays.y_test)


def classify_arrays(serve: tf.types.experimental.ConcreteFunction, images: np.ndarray,
                    batch_size: int = 1000) -> dict[str, np.ndarray]:
    """Runs `serving_default` over uint8 images [N,28,28,1] in batches; outputs as arrays."""
    batches = [serve(images=tf.constant(images[start:start + batch_size]))
               for start in range(0, len(images), batch_size)]
    return {key: np.concatenate([batch[key].numpy() for batch in batches])
            for key in ("probabilities", "classes")}


def to_tflite(path: str, variant: str) -> bytes:
    """Converts a version's `serving_default` to TFLite builtin ops: float or dynamic-range."""
    converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["serving_default"])
    if variant == "dynamic_range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations.
    try:
        return converter.convert()
    except ConverterError as e:
        ops = sorted(set(re.findall(r"'(tf\.\w+)' op", str(e))))
        raise ExportError(
            f"{path}: TFLite's builtin ops cannot express {', '.join(ops) or 'this graph'}; a "
            "rolled LSTM (exported before keras_tutorial unrolled it) needs TF select ops "
            "(Flex), which this converter is not asked for: export the model again") from None


def tflite_classes(model_content: bytes, images: np.ndarray) -> np.ndarray:
    """Classes that a TFLite model's `serving_default` gives for uint8 images [N,28,28,1]."""
    with warnings.catch_warnings():
        # TF 2.20+ points at the ai-edge-litert package; this interpreter runs the same files.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_content=model_content)
    return interpreter.get_signature_runner("serving_default")(images=images)["classes"]


def check_tflite(models_by_variant: dict[str, bytes], saved_classes: np.ndarray,
                 images: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy of each TFLite model and its agreement with the SavedModel's classes."""
    report = {"examples": len(labels),
              "saved_model_accuracy": float(np.mean(saved_classes == labels))}
    for variant, content in models_by_variant.items():
        classes = tflite_classes(content, images)
        report[variant] = {"bytes": len(content),
                           "accuracy": float(np.mean(classes == labels)),
                           "agreement_with_saved_model": float(np.mean(classes == saved_classes))}
    return report


def write_tflite(export_dir: str, version: int | None = None, dataset: str | None = None,
                 data_dir: str | None = None, max_examples: int = 0) -> tuple[str, dict]:
    """Converts a version to `<export_dir>/tflite/<version>/{float,dynamic_range}.tflite`.

    Both are checked against the SavedModel on the test split first; the report is written
    beside them as `tflite_info.json`. An existing conversion is never overwritten.
    """
    saved = open_version(export_dir, version)
    target = os.path.join(export_dir, "tflite", os.path.basename(saved.path))
    if os.path.lexists(target):
        raise ExportError(f"{target} already exists: delete it to convert version "
                          f"{os.path.basename(saved.path)} again")
    images, labels = load_split(saved.info, "test", dataset, data_dir, max_examples)
    converted = {variant: to_tflite(saved.path, variant) for variant in TFLITE_VARIANTS}
    saved_classes = classify_arrays(saved.loaded.signatures["serving_default"],
                                    images)["classes"]
    report = check_tflite(converted, saved_classes, images, labels)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _remove_abandoned_staging(os.path.dirname(target))
    with _staging_directory(os.path.dirname(target)) as staging:
        for variant, content in converted.items():
            with open(os.path.join(staging, f"{variant}.tflite"), "wb") as f:
                f.write(content)
        with open(os.path.join(staging, "tflite_info.json"), "w") as f:
            json.dump({"saved_model": saved.path, **report}, f, indent=2)
        os.rename(staging, target)
    return target, report


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _define_flags() -> None:
    """Flags of `python -m keras_tutorial.export`, defined only when it runs: train.py, which
    imports this module, has an `--export_dir` of its own."""
    flags.DEFINE_string("export_dir", None, "Export directory holding versions 1, 2, ...",
                        required=True)
    flags.DEFINE_integer("version", None, "Version to convert (default: the newest).",
                         lower_bound=1)
    flags.DEFINE_enum("dataset", None, data.DATASETS,
                      "Dataset whose test split checks the TFLite models (default: the "
                      "version's own).")
    flags.DEFINE_string("data_dir", None, "Where that dataset is (default: the version's own).")
    flags.DEFINE_integer("max_examples", 0, "Check on at most this many test examples (0: all).",
                         lower_bound=0)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    FLAGS = flags.FLAGS
    try:
        target, report = write_tflite(FLAGS.export_dir, FLAGS.version, FLAGS.dataset,
                                      FLAGS.data_dir, FLAGS.max_examples)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"tflite_dir": target, **report}))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
