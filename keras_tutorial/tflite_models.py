"""A version converted to TFLite models (float, and int8 weights), each checked against the
SavedModel on a test split before it is written."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert_phase import ConverterError

from keras_tutorial import files, versions

VARIANTS = ("float", "dynamic_range")
INFO_FILE = "tflite_info.json"
# Ops of a rolled (not unrolled) Keras LSTM, which TFLite's builtin ops cannot express.
_ROLLED_RNN_OPS = re.compile(r"TensorList|While")


def to_tflite(path: str, variant: str) -> bytes:
    """Converts a version's `serving_default` to TFLite builtin ops: float or dynamic-range."""
    converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["serving_default"])
    if variant == "dynamic_range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations.
    try:
        return converter.convert()
    except ConverterError as e:
        ops = sorted(set(re.findall(r"'(tf\.\w+)' op", str(e))))
        if any(_ROLLED_RNN_OPS.search(op) for op in ops):
            raise versions.ExportError(
                f"{path}: TFLite's builtin ops cannot express {', '.join(ops)}; a rolled LSTM "
                "(exported before keras_tutorial unrolled it) needs TF select ops (Flex), which "
                "this converter is not asked for: export the model again") from None
        raise versions.ExportError(f"{path}: TFLite conversion failed: "
                                   f"{', '.join(ops) or versions.first_line(e)}") from None


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
    saved = versions.open_version(export_dir, version)
    target = os.path.join(export_dir, "tflite", os.path.basename(saved.path))
    if os.path.lexists(target):
        raise versions.ExportError(f"{target} already exists: delete it to convert version "
                                   f"{os.path.basename(saved.path)} again")
    images, labels = saved.split("test", dataset, data_dir, max_examples)
    converted = {variant: to_tflite(saved.path, variant) for variant in VARIANTS}
    report = check_tflite(converted, saved.classify(images)["classes"], images, labels)
    files.make_directory(os.path.dirname(target))
    with files.staging_directory(os.path.dirname(target)) as staging:
        for variant, content in converted.items():
            files.write_bytes(os.path.join(staging, f"{variant}.tflite"), content)
        files.write_json(os.path.join(staging, INFO_FILE), {"saved_model": saved.path, **report})
        os.rename(staging, target)
    return target, report
