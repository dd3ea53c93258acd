"""The gRPC server against TF Serving's API, called as TF Serving's own Python clients call it:
every answer is the loaded SavedModel's, every error TF Serving's code in one line."""

import contextlib
import os
import re
import socket
import threading
import time
from typing import Iterator

import numpy as np
import pytest
import tensorflow as tf

grpc = pytest.importorskip("grpc", reason="the serve extra is not installed: "
                           "pip install -e '.[test,serve]'")
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2,
    model_management_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
    regression_pb2)

from keras_tutorial import grpc_api  # noqa: E402
from keras_tutorial.batching import Batcher  # noqa: E402
from keras_tutorial.errors import UserError  # noqa: E402
from keras_tutorial.metrics import Metrics  # noqa: E402
from keras_tutorial.repository import Repository  # noqa: E402

LIMIT = 1_000_000  # max_message_bytes of the test server.
TIMEOUT = 10.0


@contextlib.contextmanager
def grpc_server(export_dir: str, batcher: Batcher | None = None, **options,
                ) -> Iterator[tuple[int, Repository]]:
    """Serves `export_dir` over gRPC on a free loopback port; yields the port and repository."""
    repository = Repository(export_dir, os.path.basename(export_dir), batcher)
    repository.refresh()
    server, port = grpc_api.start_server(repository, "127.0.0.1", 0, **options)
    try:
        yield port, repository
    finally:
        server.stop(None).wait()


@pytest.fixture(scope="module")
def server(export_dir):
    metrics = Metrics(os.path.basename(export_dir))
    with grpc_server(export_dir, metrics=metrics, max_message_bytes=LIMIT) as (port, _):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, os.path.basename(export_dir), metrics


@pytest.fixture(scope="module")
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(server[0])


@pytest.fixture(scope="module")
def saved(export_dir):
    return tf.saved_model.load(os.path.join(export_dir, "1")).signatures


def _request(model: str, value, name: str = "images", signature: str = "",
             version: int | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[name].CopyFrom(value if isinstance(value, type(request.inputs[name]))
                                  else tf.make_tensor_proto(value))
    return request


def _pngs(images: np.ndarray) -> np.ndarray:
    return np.array([tf.io.encode_png(image).numpy() for image in images], object)


def _assert_answers(result: predict_pb2.PredictResponse, expected: dict) -> None:
    """The response holds the SavedModel's outputs, bit-exact, in the typed fields."""
    assert set(result.outputs) == set(expected)
    for alias, value in expected.items():
        tensor = result.outputs[alias]
        assert tensor.tensor_content == b"", alias
        assert [dim.size for dim in tensor.tensor_shape.dim] == list(value.shape)
        np.testing.assert_array_equal(tf.make_ndarray(tensor), value.numpy())
    probabilities = result.outputs["probabilities"]
    assert probabilities.float_val and probabilities.dtype == tf.float32.as_datatype_enum
    np.testing.assert_array_equal(np.array(probabilities.float_val, np.float32),
                                  expected["probabilities"].numpy().ravel())
    assert list(result.outputs["classes"].int64_val) == expected["classes"].numpy().tolist()
    assert list(result.outputs["class_names"].string_val) == (
        expected["class_names"].numpy().tolist())


def test_predict_answers_both_signatures_as_the_saved_model(server, stub, saved,
                                                             bordered_arrays):
    _, model, _ = server
    images = bordered_arrays.x_test[:5]
    pngs = _pngs(images)
    for signature, name, value in [("", "images", images),
                                   ("serving_default", "images", images),
                                   ("serve_images", "image_bytes", pngs)]:
        result = stub.Predict.future(_request(model, value, name, signature), TIMEOUT).result()
        _assert_answers(result, saved[signature or "serving_default"](
            **{name: tf.constant(value)}))
        assert result.model_spec.name == model
        assert result.model_spec.version.value == 1
        assert result.model_spec.signature_name == (signature or "serving_default")


def test_output_filter_and_a_specific_version(server, stub, saved, bordered_arrays):
    _, model, _ = server
    images = bordered_arrays.x_test[:3]
    request = _request(model, images, version=1)
    request.output_filter.extend(["classes", "probabilities"])
    result = stub.Predict(request, TIMEOUT)
    assert set(result.outputs) == {"classes", "probabilities"}
    expected = saved["serving_default"](images=tf.constant(images))
    np.testing.assert_array_equal(tf.make_ndarray(result.outputs["probabilities"]),
                                  expected["probabilities"].numpy())
    assert result.model_spec.version.value == 1


def test_metadata_holds_both_signatures(server, stub, export_dir):
    _, model, _ = server
    answer = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": model}, metadata_field=["signature_def"]), TIMEOUT)
    assert (answer.model_spec.name, answer.model_spec.version.value) == (model, 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert answer.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert {"serving_default", "serve_images"} <= set(defs)
    images = defs["serving_default"].inputs["images"]
    assert images.dtype == tf.uint8.as_datatype_enum
    assert [dim.size for dim in images.tensor_shape.dim] == [-1, 28, 28, 1]
    assert defs["serve_images"].inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    for name in ("serving_default", "serve_images"):
        assert set(defs[name].outputs) == {"probabilities", "classes", "class_names"}
        assert defs[name].method_name == "tensorflow/serving/predict"


def test_status_lists_the_version_as_available(server):
    channel, model, _ = server
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    for spec in ({"name": model}, {"name": model, "version": {"value": 1}}):
        answer = models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=spec), TIMEOUT)
        entry, = answer.model_version_status
        assert (entry.version, entry.state, entry.status.error_code) == (
            1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)


def _status(spec: dict | None) -> get_model_status_pb2.GetModelStatusRequest:
    return get_model_status_pb2.GetModelStatusRequest(
        **({} if spec is None else {"model_spec": spec}))


def _error_cases(model: str) -> list:
    """(method, request, code, what the message says), TF Serving's where it has one."""
    image = np.zeros((1, 28, 28, 1), np.uint8)
    label = _request(model, image)
    label.model_spec.version_label = "stable"
    unknown_alias = _request(model, image)
    unknown_alias.output_filter.append("logits")
    twice = _request(model, image)
    twice.output_filter.extend(["classes", "classes"])
    extra = _request(model, image)
    extra.inputs["extra"].CopyFrom(tf.make_tensor_proto(image))
    padded = tf.make_tensor_proto(np.uint8(0), shape=[10**9, 28, 28, 1])
    metadata = get_model_metadata_pb2.GetModelMetadataRequest
    return [
        ("Predict", _request("nothing", image), "NOT_FOUND",
         "Servable not found for request: Latest(nothing)"),
        ("Predict", _request(model, image, version=9), "NOT_FOUND",
         f"Servable not found for request: Specific({model}, 9)"),
        ("Predict", label, "INVALID_ARGUMENT", "'version_label' set"),
        ("Predict", predict_pb2.PredictRequest(), "INVALID_ARGUMENT", "Missing ModelSpec"),
        ("Predict", _request(model, image, signature="nope"), "FAILED_PRECONDITION",
         'Serving signature key "nope" not found.'),
        ("Predict", _request(model, image.astype(np.float32)), "INVALID_ARGUMENT",
         "Expects arg[0] to be uint8 but float is provided (input images)"),
        ("Predict", _request(model, _pngs(image)), "INVALID_ARGUMENT",
         "Expects arg[0] to be uint8 but string is provided (input images); to send encoded "
         'image files, set model_spec.signature_name to "serve_images" and name the input '
         "image_bytes"),
        ("Predict", _request(model, np.zeros((1, 3), np.uint8)), "INVALID_ARGUMENT",
         "Shape of tensor images [1,3] is not compatible with expected shape [?,28,28,1]"),
        ("Predict", predict_pb2.PredictRequest(model_spec={"name": model}), "INVALID_ARGUMENT",
         "input size does not match signature: 0!=1 len({}) != len({images}). Sent extra: {}. "
         "Missing but required: {images}."),
        ("Predict", extra, "INVALID_ARGUMENT", "Sent extra: {extra}."),
        ("Predict", _request(model, image, name="pixels"), "INVALID_ARGUMENT",
         "Signature input alias: images(feed name: serving_default_images:0) not found"),
        ("Predict", unknown_alias, "INVALID_ARGUMENT",
         "output tensor alias not found in signature: logits Outputs expected to be in the "
         "set {class_names,classes,probabilities}."),
        ("Predict", twice, "INVALID_ARGUMENT", "duplicate output tensor alias: classes"),
        ("Predict", _request(model, padded), "INVALID_ARGUMENT", "tensor parsing error: images"),
        ("Predict", _request(model, np.array([b"not an image"], object), "image_bytes",
                             "serve_images"), "INVALID_ARGUMENT", "Unknown image file format"),
        ("Predict", _request(model, np.zeros((LIMIT // 784 + 1, 28, 28, 1), np.uint8)),
         "RESOURCE_EXHAUSTED", "Received message larger than max"),
        ("GetModelMetadata", metadata(model_spec={"name": model}), "INVALID_ARGUMENT",
         "GetModelMetadataRequest must specify at least one metadata_field"),
        ("GetModelMetadata", metadata(model_spec={"name": model}, metadata_field=["x"]),
         "INVALID_ARGUMENT", "Metadata field x is not supported"),
        ("GetModelMetadata", metadata(metadata_field=["signature_def"]), "INVALID_ARGUMENT",
         "Missing ModelSpec"),
        ("GetModelMetadata", metadata(model_spec={"name": model, "version": {"value": 9}},
                                      metadata_field=["signature_def"]), "NOT_FOUND",
         f"Specific({model}, 9)"),
        ("GetModelStatus", _status({"name": "nothing"}), "NOT_FOUND",
         "Could not find any versions of model nothing"),
        ("GetModelStatus", _status({"name": model, "version": {"value": 9}}), "NOT_FOUND",
         f"Could not find version 9 of model {model}"),
        ("GetModelStatus", _status(None), "INVALID_ARGUMENT", "Missing ModelSpec"),
        ("Classify", classification_pb2.ClassificationRequest(model_spec={"name": model}),
         "UNIMPLEMENTED", "Classify is not supported"),
        ("Regress", regression_pb2.RegressionRequest(model_spec={"name": model}),
         "UNIMPLEMENTED", "Regress is not supported"),
        ("MultiInference", inference_pb2.MultiInferenceRequest(), "UNIMPLEMENTED",
         "MultiInference is not supported"),
        ("HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest(),
         "UNIMPLEMENTED", "HandleReloadConfigRequest is not supported"),
    ]


def test_every_error_gets_tf_servings_code_and_one_line_and_the_server_goes_on(
        server, stub, saved, bordered_arrays):
    channel, model, _ = server
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    good = _request(model, bordered_arrays.x_test[:1])
    expected = saved["serving_default"](images=tf.constant(bordered_arrays.x_test[:1]))
    for method, request, code, message in _error_cases(model):
        call = getattr(stub if hasattr(stub, method) else models, method)
        with pytest.raises(grpc.RpcError) as raised:
            call(request, TIMEOUT)
        error = raised.value
        assert (error.code().name, method) == (code, method), error.details()
        details = error.details()
        assert message in details, details
        assert "\n" not in details and "Traceback" not in details and len(details) < 600
        assert not re.search(r"(^|[\s'\"(])/\w", details), details  # No absolute path.
        _assert_answers(stub.Predict(good, TIMEOUT), expected)


def test_calls_are_counted_by_api_version_and_code(server, stub, bordered_arrays):
    channel, model, metrics = server

    def count(api: str, version: str, status: str) -> float:
        return metrics.registry.get_sample_value("keras_tutorial_requests_total", {
            "model": model, "version": version, "api": api, "protocol": "grpc",
            "status": status}) or 0

    before = (count("predict", "1", "OK"), count("predict", "", "NOT_FOUND"),
              count("get_model_status", "", "OK"))
    stub.Predict(_request(model, bordered_arrays.x_test[:4]), TIMEOUT)
    with pytest.raises(grpc.RpcError):
        stub.Predict(_request(model, bordered_arrays.x_test[:4], version=9), TIMEOUT)
    model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        _status({"name": model}), TIMEOUT)
    assert (count("predict", "1", "OK"), count("predict", "", "NOT_FOUND"),
            count("get_model_status", "", "OK")) == tuple(n + 1 for n in before)
    assert metrics.registry.get_sample_value("keras_tutorial_predict_batch_size_sum", {
        "model": model, "protocol": "grpc"}) >= 4


def test_calls_beyond_the_limit_get_resource_exhausted(export_dir, bordered_arrays):
    # The first call waits in the batcher for company while the second arrives.
    batcher = Batcher(max_batch_size=8, timeout_seconds=1.5)
    with grpc_server(export_dir, batcher, max_concurrent_rpcs=1, max_workers=1) as (port, _):
        request = _request(os.path.basename(export_dir), bordered_arrays.x_test[:1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            waiting = predict.future(request, TIMEOUT)
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as raised:
                predict(request, TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(waiting.result().outputs["classes"].int64_val) == 1


def test_many_clients_sharing_one_connection_all_get_answers(export_dir, bordered_arrays):
    # Channels to one address share a connection; none of 32 busy clients may be refused.
    with grpc_server(export_dir, None) as (port, _):
        request = _request(os.path.basename(export_dir), bordered_arrays.x_test[:1])
        failures = []

        def client() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
                for _ in range(20):
                    try:
                        predict.future(request, TIMEOUT).result()
                    except grpc.RpcError as e:
                        failures.append(e.code())

        threads = [threading.Thread(target=client) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []


def test_an_address_in_use_is_a_one_line_error(export_dir):
    repository = Repository(export_dir, "digits")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port} for gRPC"):
            grpc_api.start_server(repository, "127.0.0.1", port)


def test_ipv6_addresses_are_bracketed(export_dir):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    server, port = grpc_api.start_server(Repository(export_dir, "digits"), "::1", 0)
    try:
        with grpc.insecure_channel(f"[::1]:{port}") as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:  # Nothing loaded: NOT_FOUND.
                models.GetModelStatus(_status({"name": "digits"}), TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(None).wait()


@pytest.mark.parametrize("array", [
    np.array([[0.1, -np.inf], [np.nan, 2.0]], np.float32), np.array([1.5, -2.0], np.float64),
    np.array([0.5, 65504.0], np.float16), np.array([0, 255], np.uint8),
    np.array([-7, 3], np.int32), np.array([2**40], np.int64), np.array([True, False]),
    np.array([1 + 2j], np.complex64), np.array([b"a", b"\xff\x00"], object),
    np.array(b"scalar", object), np.zeros((0, 10), np.float32)])
def test_outputs_are_written_in_the_typed_fields(array):
    proto = predict_pb2.PredictResponse().outputs["x"]
    grpc_api.fill_tensor(proto, array)
    assert proto.tensor_content == b""
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    assert tf.make_ndarray(proto).dtype == (array.dtype if array.dtype != object else object)
