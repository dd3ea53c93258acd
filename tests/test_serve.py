"""The REST server against TF Serving's protocol: every request form is answered as the loaded
SavedModel answers the same tensors, every error with TF Serving's status and one line."""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from keras_tutorial import data, export, rest
from keras_tutorial.batching import Batcher
from keras_tutorial.errors import UserError
from keras_tutorial.versions import check_export_dir

pytest.importorskip("starlette", reason="the serve extra is not installed: "
                    "pip install -e '.[test,serve]'")
from serving_helpers import call, running_server  # noqa: E402

LIMIT = 1_000_000  # --max_request_bytes of the test server.


@pytest.fixture(scope="module")
def server(export_dir):
    with running_server(export_dir, max_request_bytes=LIMIT) as port:
        yield port, os.path.basename(export_dir)


@pytest.fixture(scope="module")
def saved(export_dir):
    return tf.saved_model.load(os.path.join(export_dir, "1")).signatures


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def _b64(raw: bytes) -> dict:
    return {"b64": base64.b64encode(raw).decode()}


def _expected(saved, signature: str, tensor) -> dict:
    """The SavedModel's own answer: outputs as arrays, names decoded as the JSON has them."""
    key = "images" if signature == "serving_default" else "image_bytes"
    outputs = saved[signature](**{key: tf.constant(tensor)})
    return {"probabilities": outputs["probabilities"].numpy(),
            "classes": outputs["classes"].numpy(),
            "class_names": [name.decode() for name in outputs["class_names"].numpy()]}


def _assert_rows(predictions: list, expected: dict) -> None:
    assert [row["classes"] for row in predictions] == expected["classes"].tolist()
    assert [row["class_names"] for row in predictions] == expected["class_names"]
    # Floats are written in their shortest float32 form: they read back bit-exact.
    np.testing.assert_array_equal(
        np.array([row["probabilities"] for row in predictions], np.float32),
        expected["probabilities"])


def _assert_columns(outputs: dict, expected: dict) -> None:
    assert outputs["classes"] == expected["classes"].tolist()
    assert outputs["class_names"] == expected["class_names"]
    np.testing.assert_array_equal(np.array(outputs["probabilities"], np.float32),
                                  expected["probabilities"])


def test_status_lists_the_version_as_tf_serving_does(server):
    port, model = server
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert call(port, "GET", f"/v1/models/{model}") == (200, expected)
    assert call(port, "GET", f"/v1/models/{model}/versions/1") == (200, expected)


@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_metadata_has_the_signature_defs_and_class_names(server, suffix):
    port, model = server
    status, answer = call(port, "GET", f"/v1/models/{model}{suffix}/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": model, "signature_name": "", "version": "1"}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serve_images"} <= set(signatures)
    images = signatures["serving_default"]["inputs"]["images"]
    assert images["dtype"] == "DT_UINT8"
    assert [dim["size"] for dim in images["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert signatures["serve_images"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(signatures["serve_images"]["outputs"]) == {"probabilities", "classes",
                                                         "class_names"}
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert answer["metadata"]["class_names"] == list(data.CLASS_NAMES["fashion_mnist"])


def test_every_predict_form_answers_as_the_saved_model(server, saved, bordered_arrays):
    port, model = server
    images = bordered_arrays.x_test[:3]
    pngs = [_png(image) for image in images]
    pixels = _expected(saved, "serving_default", images)
    files = _expected(saved, "serve_images", pngs)
    rows = {
        "plain rows": ({"instances": images.tolist()}, pixels),
        "named rows": ({"instances": [{"images": image.tolist()} for image in images]}, pixels),
        "named signature": ({"signature_name": "serving_default",
                             "instances": images.tolist()}, pixels),
        "b64 rows": ({"signature_name": "serve_images",
                      "instances": [_b64(png) for png in pngs]}, files),
        "named b64 rows": ({"signature_name": "serve_images",
                            "instances": [{"image_bytes": _b64(png)} for png in pngs]}, files),
    }
    columns = {
        "plain columns": ({"inputs": images.tolist()}, pixels),
        "named columns": ({"inputs": {"images": images.tolist()}}, pixels),
        "b64 columns": ({"signature_name": "serve_images",
                         "inputs": {"image_bytes": [_b64(png) for png in pngs]}}, files),
    }
    for path in (f"/v1/models/{model}:predict", f"/v1/models/{model}/versions/1:predict"):
        for form, (body, expected) in rows.items():
            status, answer = call(port, "POST", path, body)
            assert status == 200, (form, answer)
            _assert_rows(answer["predictions"], expected)
        for form, (body, expected) in columns.items():
            status, answer = call(port, "POST", path, body)
            assert status == 200, (form, answer)
            _assert_columns(answer["outputs"], expected)


def _error_cases(model: str) -> list:
    """(method, path, body, TF Serving's status, what the message says)"""
    predict = f"/v1/models/{model}:predict"
    image = np.zeros((28, 28, 1), np.uint8).tolist()
    return [
        ("POST", "/v1/models/nothing:predict", {"instances": [image]}, 404,
         "Servable not found for request: Latest(nothing)"),
        ("GET", "/v1/models/nothing", None, 404, "Could not find any versions of model nothing"),
        ("GET", "/v1/models/nothing/metadata", None, 404, "Servable not found for request"),
        ("POST", f"/v1/models/{model}/versions/9:predict", {"instances": [image]}, 404,
         f"Servable not found for request: Specific({model}, 9)"),
        ("GET", f"/v1/models/{model}/versions/9", None, 404,
         f"Could not find version 9 of model {model}"),
        ("GET", f"/v1/models/{model}/versions/9/metadata", None, 404, "Specific"),
        ("POST", predict, {"signature_name": "nope", "instances": [image]}, 400,
         'Serving signature name: "nope" not found in signature def'),
        ("POST", predict, {"signature_name": 7, "instances": [image]}, 400,
         "'signature_name' key must be a string value"),
        ("POST", predict, {"instances": [[1, 2, 3]]}, 400,
         "Shape of tensor images [1,3] is not compatible with expected shape [?,28,28,1]"),
        ("POST", predict, {"instances": [np.full((28, 28, 1), 0.5).tolist()]}, 400,
         "is not of expected type: uint8"),
        ("POST", predict, {"instances": [np.full((28, 28, 1), 300).tolist()]}, 400,
         "outside the range of uint8"),
        ("POST", predict, {"instances": [[[0]], [[0], [0]]]}, 400, "lists of unequal length"),
        ("POST", predict, {"instances": [_b64(b"x")]}, 400,
         'JSON Value: [{"b64": "eA=="}] Type: Object or mixed is not of expected type: uint8 '
         '(input images); to send encoded image files, add "signature_name": "serve_images"'),
        ("POST", predict, {"inputs": {"images": _b64(b"x")}}, 400,
         '(input images); to send encoded image files, add "signature_name": "serve_images"'),
        ("POST", predict, {"instances": []}, 400, "No values in 'instances' array"),
        ("POST", predict, {"examples": [image]}, 400, "Missing 'inputs' or 'instances' key"),
        ("POST", predict, {"inputs": [image], "instances": [image]}, 400,
         "expecting only one of 'inputs' or 'instances'"),
        ("POST", predict, "{\"instances\": [", 400, "JSON Parse error"),
        ("POST", predict, "[1, 2]", 400, "Is not object"),
        ("POST", predict, "", 400, "JSON Parse error: The document is empty"),
        ("POST", predict, {"signature_name": "serve_images",
                           "instances": [_b64(b"not an image")]}, 400,
         "Unknown image file format. One of PNG, JPEG, GIF, BMP required."),
        ("POST", predict, {"signature_name": "serve_images", "instances": [_b64(b"")]}, 400,
         "Input is empty."),
        ("POST", predict, {"signature_name": "serve_images", "instances": [{"b64": "%%%"}]},
         400, "Unable to base64 decode"),
        ("POST", predict, {"signature_name": "serve_images", "instances": [7]}, 400,
         "is not of expected type: string"),
        ("POST", predict, {"instances": [image], "padding": "x" * LIMIT}, 413,
         f"larger than the server's limit of {LIMIT} bytes"),
        ("POST", f"/v1/models/{model}:classify", {"examples": []}, 400,
         "Expected classify signature method_name to be tensorflow/serving/classify"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("GET", "/v1/everything", None, 400, "Malformed request: GET /v1/everything"),
        ("DELETE", f"/v1/models/{model}", None, 400, "Malformed request: DELETE"),
        ("GET", "/secrets.txt", None, 404, "Not Found: GET /secrets.txt"),
        ("GET", "/../setup.cfg", None, 404, "Not Found"),
    ]


def test_every_error_gets_tf_servings_status_and_one_line_and_the_server_goes_on(
        server, saved, bordered_arrays):
    port, model = server
    good = {"instances": bordered_arrays.x_test[:1].tolist()}
    expected = _expected(saved, "serving_default", bordered_arrays.x_test[:1])
    for method, path, body, status, message in _error_cases(model):
        got, answer = call(port, method, path, body)
        assert (got, list(answer)) == (status, ["error"]), (path, body, answer)
        assert message in answer["error"] and "\n" not in answer["error"], answer
        assert len(answer["error"]) < 300, answer
        got, answer = call(port, "POST", f"/v1/models/{model}:predict", good)
        assert got == 200
        _assert_rows(answer["predictions"], expected)


def test_outputs_are_written_as_tf_serving_writes_them():
    outputs = {"scores": np.array([[0.1, np.nan], [np.inf, 1.0]], np.float32),
               "ids": np.array([3, 4], np.int64),
               "names": np.array([b"a", "\u00e9".encode()], object),
               "thumb_bytes": np.array([b"\x00\xff", b""], object)}
    written = rest.dumps(rest.format_outputs(outputs, row_format=True)).decode()
    assert '"scores":[0.1,NaN]' in written and '"scores":[Infinity,1.0]' in written
    first = json.loads(written)["predictions"][0]
    assert first == {"scores": [0.1, pytest.approx(np.nan, nan_ok=True)], "ids": 3,
                     "names": "a", "thumb_bytes": {"b64": "AP8="}}
    assert json.loads(written)["predictions"][1]["names"] == "\u00e9"
    # Finite floats take the fast writer; they read back as the same float32, bit for bit.
    probabilities = np.random.default_rng(0).random((4, 10)).astype(np.float32) / 7
    finite = rest.dumps(rest.format_outputs({"p": probabilities}, row_format=False))
    np.testing.assert_array_equal(np.array(json.loads(finite)["outputs"], np.float32),
                                  probabilities)
    ids = {"ids": outputs["ids"]}
    assert json.loads(rest.dumps(rest.format_outputs(ids, row_format=False))) == {
        "outputs": [3, 4]}
    assert json.loads(rest.dumps(rest.format_outputs(ids, row_format=True))) == {
        "predictions": [3, 4]}


def test_a_new_version_is_served_without_a_restart(tmp_path, export_dir, trained_mlp):
    served = str(tmp_path / "served")
    shutil.copytree(export_dir, served)
    with running_server(served, poll_seconds=0.1) as port:
        export.export_model(trained_mlp, served, class_names=data.CLASS_NAMES["mnist"])
        _wait_for(lambda: _versions(port, "served") == ["2", "1"])
        status, answer = call(port, "GET", "/v1/models/served/metadata")
        assert answer["model_spec"]["version"] == "2"
        assert answer["metadata"]["class_names"] == list(data.CLASS_NAMES["mnist"])
        # Neither a half-written export nor a directory without saved_model.pb is a version;
        # a broken one is reported, and does not stop the others serving.
        os.makedirs(os.path.join(served, ".staging-1-x"))
        with open(os.path.join(served, ".staging-1-x", "saved_model.pb"), "wb") as f:
            f.write(b"half")
        os.makedirs(os.path.join(served, "5", "variables"))
        os.makedirs(os.path.join(served, "3"))
        with open(os.path.join(served, "3", "saved_model.pb"), "wb") as f:
            f.write(b"not a SavedModel")
        _wait_for(lambda: _versions(port, "served") == ["3", "2", "1"])
        status, answer = call(port, "GET", "/v1/models/served/versions/3")
        entry, = answer["model_version_status"]
        assert entry["state"] == "END" and entry["status"]["error_code"] != "OK"
        status, answer = call(port, "POST", "/v1/models/served:predict",
                              {"instances": np.zeros((1, 28, 28, 1), int).tolist()})
        assert status == 200
        shutil.rmtree(os.path.join(served, "1"))
        _wait_for(lambda: "1" not in _versions(port, "served"))


def _versions(port: int, model: str) -> list[str]:
    _, answer = call(port, "GET", f"/v1/models/{model}")
    return [entry["version"] for entry in answer.get("model_version_status", [])]


def _wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not see the change"
        time.sleep(0.05)


def test_batcher_merges_concurrent_calls_and_isolates_failures():
    calls = []

    def double(inputs):
        calls.append(len(inputs["x"]))
        if (inputs["x"] < 0).any():
            raise ValueError("negative")
        return {"y": inputs["x"] * 2}

    batcher = Batcher(max_batch_size=8, timeout_seconds=1.0)
    results = {}

    def client(i: int) -> None:
        try:
            results[i] = batcher.call("key", double, {"x": np.array([i if i != 3 else -1])})
        except ValueError as e:
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls[0] == 6 and sorted(calls[1:]) == [1] * 6  # Merged, failed, then each alone.
    assert isinstance(results[3], ValueError)
    assert all(results[i]["y"].tolist() == [2 * i] for i in range(6) if i != 3)
    assert batcher.call("key", double, {"x": np.arange(8)})["y"].tolist() == list(range(0, 16, 2))
    assert calls[-1] == 8  # A full batch runs at once.


def test_batching_server_answers_concurrent_clients_as_the_saved_model(
        export_dir, saved, bordered_arrays):
    images = bordered_arrays.x_test[:12]
    expected = _expected(saved, "serving_default", images)
    batcher = Batcher(max_batch_size=8, timeout_seconds=0.05)
    answers = {}
    with running_server(export_dir, batcher=batcher) as port:
        model = os.path.basename(export_dir)

        def client(i: int) -> None:
            answers[i] = call(port, "POST", f"/v1/models/{model}:predict",
                              {"instances": images[i:i + 1].tolist()})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for i, (status, answer) in answers.items():
        assert status == 200
        row, = answer["predictions"]
        assert row["classes"] == expected["classes"][i]
        np.testing.assert_allclose(row["probabilities"], expected["probabilities"][i],
                                   rtol=1e-5, atol=1e-6)


def test_a_wrong_type_says_where_encoded_image_files_go_only_when_it_holds_them():
    spec = tf.TensorSpec([None, 28, 28, 1], tf.uint8)
    hint = 'to send encoded image files, add "signature_name": "serve_images"'
    for value in ([[[_b64(b"x")]]], _b64(b"x"), [[0], [_b64(b"x")]]):
        with pytest.raises(rest.RestError, match=re.escape(hint)):
            rest.to_array(value, spec, "images")
    for value in ([[0.5]], ["text"], [{"png": "eA=="}]):
        with pytest.raises(rest.RestError, match="is not of expected type") as excinfo:
            rest.to_array(value, spec, "images")
        assert "serve_images" not in str(excinfo.value)


def test_an_empty_or_missing_export_directory_is_refused_in_one_line(tmp_path, export_dir):
    with pytest.raises(UserError, match="does not exist"):
        check_export_dir(str(tmp_path / "missing"), version_flag=False)
    os.makedirs(tmp_path / "empty" / "1")  # No saved_model.pb: not a version.
    with pytest.raises(UserError, match="has no versions"):
        check_export_dir(str(tmp_path / "empty"), version_flag=False)
    os.symlink(export_dir, tmp_path / "cnn")
    with pytest.raises(UserError) as excinfo:
        check_export_dir(str(tmp_path / "cnn" / "1"), version_flag=False)
    assert str(excinfo.value) == (f"{tmp_path / 'cnn' / '1'} is version 1 of "
                                  f"{tmp_path / 'cnn'}: pass --export_dir={tmp_path / 'cnn'}")
    with pytest.raises(UserError) as excinfo:
        check_export_dir(str(tmp_path), version_flag=False)
    assert str(excinfo.value) == (f"{tmp_path} has no versions; it holds the export "
                                  f"directories cnn: pass --export_dir={tmp_path / 'cnn'}")


def _command(*flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "keras_tutorial.serve", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


@pytest.mark.slow
def test_command_serves_rest_and_grpc_and_reports_bad_input_in_one_line(tmp_path, export_dir):
    grpc_port = _free_port()
    taken = socket.create_server(("127.0.0.1", 0))
    models = tmp_path / "saved_models"
    models.mkdir()
    for name in ("mlp", "cnn"):
        os.symlink(export_dir, models / name)
    bad = {"missing": ([f"--export_dir={tmp_path}/missing"], "does not exist"),
           "version": ([f"--export_dir={models}/cnn/1/"],
                       f"error: {models}/cnn/1 is version 1 of {models}/cnn: pass "
                       f"--export_dir={models}/cnn"),
           "models": ([f"--export_dir={models}"],
                      f"error: {models} has no versions; it holds the export directories "
                      f"cnn, mlp: pass --export_dir={models}/cnn"),
           "port": ([f"--export_dir={export_dir}", "--port=70000"],
                    "flag --port=70000: 70000 is not an integer in the range [0, 65535]"),
           "grpc port": ([f"--export_dir={export_dir}", "--port=0",
                          f"--grpc_port={taken.getsockname()[1]}"], "--grpc_port")}
    processes = {name: _command(*flags) for name, (flags, _) in bad.items()}
    server = _command(f"--export_dir={export_dir}", "--port=0", "--model_name=digits",
                      f"--grpc_port={grpc_port}")
    try:
        banner = server.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", banner)[1])
        assert f"gRPC on 127.0.0.1:{grpc_port}" in banner, banner
        status, answer = call(port, "GET", "/v1/models/digits")
        assert status == 200 and answer["model_version_status"][0]["version"] == "1"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "digits"
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, 30)
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert status.model_version_status[0].state == available
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)
        taken.close()
    assert server.returncode == 0 and "Traceback" not in stderr
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert process.returncode == 2, (name, stderr[-2000:])
        assert lines[-1].startswith("error: ") and bad[name][1] in lines[-1], (name, stderr)
        assert "Traceback" not in stderr
