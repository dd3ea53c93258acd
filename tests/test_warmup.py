"""Every export carries TF Serving's warm-up requests, and the server replays them before it
reports a version AVAILABLE."""

import os
import shutil

import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from keras_tutorial import warmup

pytest.importorskip("starlette", reason="the serve extra is not installed: "
                    "pip install -e '.[test,serve]'")
from serving_helpers import call, running_server  # noqa: E402


def test_an_export_holds_warm_up_requests_that_tf_serving_can_replay(export_dir):
    version = os.path.join(export_dir, "1")
    path = os.path.join(version, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(record)
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    requests = [log.predict_log.request for log in logs]
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "serve_images"]
    # What TF Serving does with each: its inputs through the named signature.
    signatures = tf.saved_model.load(version).signatures
    for request in requests:
        outputs = signatures[request.model_spec.signature_name](**{
            name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()})
        assert outputs["probabilities"].shape == (1, 10)
    assert warmup.replay(tf.saved_model.load(version), version) == 2


def _with_warm_up(tmp_path, export_dir, requests) -> str:
    served = str(tmp_path / "served")
    shutil.copytree(export_dir, served)
    warmup.write(os.path.join(served, "1"), requests)
    return served


def test_a_version_whose_warm_up_fails_is_not_served(tmp_path, export_dir):
    bad = predict_pb2.PredictRequest()
    bad.model_spec.signature_name = "serving_default"
    bad.inputs["images"].CopyFrom(tf.make_tensor_proto([[1, 2, 3]], tf.uint8))
    with running_server(_with_warm_up(tmp_path, export_dir, [bad])) as port:
        status, answer = call(port, "GET", "/v1/models/served/versions/1")
        entry, = answer["model_version_status"]
        assert entry["state"] == "END"
        assert "is not compatible with expected shape" in entry["status"]["error_message"]
        assert call(port, "POST", "/v1/models/served:predict", {"instances": [[1]]})[0] == 404


def test_more_warm_up_records_than_tf_serving_allows_are_refused(tmp_path, export_dir):
    many = warmup.requests("images", "image_bytes")[:1] * (warmup.MAX_RECORDS + 1)
    with pytest.raises(ValueError, match="exceeds the maximum"):
        warmup.read(os.path.join(_with_warm_up(tmp_path, export_dir, many), "1"))
