"""TF Serving's warm-up requests: written into every export, replayed before a version serves.

A freshly loaded SavedModel runs its first call of each signature slowly (TensorFlow optimises
and initialises the graph then), so the first user would wait for it. TF Serving replays the
`PredictionLog`s in `assets.extra/tf_serving_warmup_requests` before it reports a version
AVAILABLE; `python -m keras_tutorial.serve` does the same with the same file, so both servers
answer their first user at full speed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from keras_tutorial import data

PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF Serving's limit (WarmupConsts::kMaxNumRecords).


def requests(pixels_input: str, image_bytes_input: str) -> list[predict_pb2.PredictRequest]:
    """One small request per signature: a blank image as pixels, and as a PNG file."""
    blank = np.zeros((1,) + data.IMAGE_SHAPE, np.uint8)
    pixels = predict_pb2.PredictRequest()
    pixels.model_spec.signature_name = "serving_default"
    pixels.inputs[pixels_input].CopyFrom(tf.make_tensor_proto(blank))
    files = predict_pb2.PredictRequest()
    files.model_spec.signature_name = "serve_images"
    files.inputs[image_bytes_input].CopyFrom(
        tf.make_tensor_proto([tf.io.encode_png(blank[0]).numpy()]))
    return [pixels, files]


def write(version_dir: str, predict_requests: list[predict_pb2.PredictRequest]) -> str:
    """Writes the requests as TF Serving's warm-up file of a version; returns its path."""
    path = os.path.join(version_dir, PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in predict_requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read(version_dir: str) -> list[predict_pb2.PredictRequest]:
    """The predict requests of a version's warm-up file (none if it has none), as TF Serving
    reads them: at most MAX_RECORDS, only predict logs."""
    path = os.path.join(version_dir, PATH)
    if not os.path.isfile(path):
        return []
    found = []
    for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        if i == MAX_RECORDS:
            raise ValueError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) "
                             f"at {PATH}")
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"Unsupported log_type for warmup: {log.WhichOneof('log_type')}")
        found.append(log.predict_log.request)
    return found


def replay(loaded: Any, version_dir: str) -> int:
    """Runs a loaded version's warm-up requests through its signatures; returns how many.
    A request that fails fails the version's load, as in TF Serving."""
    found = read(version_dir)
    for request in found:
        signature = loaded.signatures[request.model_spec.signature_name or "serving_default"]
        signature(**{name: tf.constant(tf.make_ndarray(proto))
                     for name, proto in request.inputs.items()})
    return len(found)
