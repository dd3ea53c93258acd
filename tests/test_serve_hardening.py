"""The server tried as an attacker would: every abuse is refused in one line, costs little, and
leaves the real server (`python -m keras_tutorial.serve`, on a free loopback port) answering."""

import base64
import gzip
import http.client
import io
import json
import os
import shutil
import socket
import struct
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("starlette", reason="the serve extra is not installed: "
                    "pip install -e '.[test,serve]'")
from serving_helpers import call, exchange, memory_mib, running_server, serve_command  # noqa: E402

LIMIT = 1_000_000  # --max_request_bytes of the servers here.


@pytest.fixture(scope="module")
def served(export_dir):
    """The real command with short timeouts, warmed up on both signatures."""
    with serve_command(export_dir, f"--max_request_bytes={LIMIT}", "--header_timeout_seconds=1",
                       "--body_timeout_seconds=1") as (process, port):
        model = os.path.basename(export_dir)
        assert _predict(port, model, np.zeros((1, 28, 28, 1), int).tolist())[0] == 200
        assert _predict_images(port, model, [_png(np.zeros((28, 28, 1), np.uint8))])[0] == 200
        yield process, port, model
    assert "Traceback" not in process.stderr_text, process.stderr_text[-3000:]


def _predict(port: int, model: str, instances, headers=None, path=None) -> tuple[int, dict]:
    return call(port, "POST", path or f"/v1/models/{model}:predict", {"instances": instances},
                headers)


def _predict_images(port: int, model: str, files: list[bytes]) -> tuple[int, dict]:
    return call(port, "POST", f"/v1/models/{model}:predict",
                {"signature_name": "serve_images",
                 "instances": [{"b64": base64.b64encode(f).decode()} for f in files]})


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG of one black row per line: a few hundred bytes that declare any size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    rows = zlib.compress(b"\0" * (width + 1) * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _animated_gif(frames: int, side: int) -> bytes:
    from PIL import Image
    images = [Image.new("P", (side, side), i % 2) for i in range(frames)]
    for image in images:
        image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], optimize=False)
    return out.getvalue()


def _assert_one_line(answer: dict, *words: str) -> None:
    assert list(answer) == ["error"], answer
    message = answer["error"]
    assert message and "\n" not in message and len(message) < 300, message
    assert all(word in message for word in words), message


def test_image_bombs_are_refused_and_cost_no_memory(served):
    process, port, model = served
    peak = memory_mib(process.pid, "VmHWM")
    bomb = _png_declaring(30000, 1)
    assert len(bomb) < 200
    status, answer = _predict_images(port, model, [bomb])
    assert status == 400
    _assert_one_line(answer, "30000x1", "at most")
    status, answer = _predict_images(port, model, [_png_declaring(100000, 1)])
    assert status == 400
    _assert_one_line(answer, "100000x1")
    # Every frame of an animation used to be decoded; only the first is used.
    status, answer = _predict_images(port, model, [_animated_gif(100, 2000)])
    assert status == 200, answer
    # The 30000x1 PNG took the process from 0.9 to 6.2 GB, the GIF +386 MB.
    assert memory_mib(process.pid, "VmHWM") - peak < 100
    assert _predict(port, model, np.zeros((1, 28, 28, 1), int).tolist())[0] == 200


def test_requests_from_other_sites_are_refused(served):
    process, port, model = served
    image = np.zeros((1, 28, 28, 1), int).tolist()
    # A page on another site can POST text/plain without asking first (no preflight).
    status, answer = _predict(port, model, image, {"Origin": "http://evil.example",
                                                   "Content-Type": "text/plain"})
    assert status == 403
    _assert_one_line(answer, "http://evil.example", "--cors_origin")
    # Its own page, on the same origin, is answered.
    own = {"Origin": f"http://127.0.0.1:{port}"}
    assert _predict(port, model, image, own)[0] == 200
    # DNS rebinding: evil.example resolved to 127.0.0.1 sends its own name as Host.
    status, answer = call(port, "GET", f"/v1/models/{model}",
                          headers={"Host": f"evil.example:{port}"})
    assert status == 403
    _assert_one_line(answer, "evil.example", "--allowed_hosts")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert call(port, "GET", f"/v1/models/{model}", headers={"Host": host})[0] == 200, host
    for host in (f"[::1]:{port}", "10.0.0.1", "a/v1/models/x#", "127.0.0.1.nip.io"):
        assert call(port, "GET", f"/v1/models/{model}", headers={"Host": host})[0] == 403, host


def test_allowed_hosts_and_cors_origins_are_answered_with_cors_headers(export_dir):
    model = os.path.basename(export_dir)
    image = np.zeros((1, 28, 28, 1), int).tolist()
    with serve_command(export_dir, "--allowed_hosts=mybox.local",
                       "--cors_origin=http://app.example:3000") as (process, port):
        assert call(port, "GET", f"/v1/models/{model}", headers={"Host": "mybox.local"})[0] == 200
        app = {"Origin": "http://app.example:3000"}
        preflight = {**app, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"}
        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.request("OPTIONS", f"/v1/models/{model}:predict", headers=preflight)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert response.headers["access-control-allow-origin"] == "http://app.example:3000"
        assert "POST" in response.headers["access-control-allow-methods"]
        status, _, headers = exchange(port, "POST", f"/v1/models/{model}:predict",
                                      {"instances": image}, app)
        assert status == 200
        assert headers["access-control-allow-origin"] == "http://app.example:3000"
        assert _predict(port, model, image, {"Origin": "http://evil.example"})[0] == 403


def test_routes_follow_the_request_line_never_the_host_header(export_dir):
    model = os.path.basename(export_dir)
    with serve_command(export_dir, "--allowed_hosts=*") as (process, port):
        status, answer = call(port, "GET", "/v1/models/nope",
                              headers={"Host": f"a/v1/models/{model}/metadata#"})
        assert status == 404
        _assert_one_line(answer, "Could not find any versions of model nope")


def _nested(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


def test_malformed_requests_are_400s_in_one_line(served):
    process, port, model = served
    predict = f"/v1/models/{model}:predict"
    images = {"signature_name": "serve_images"}
    ints = np.zeros((1, 28, 28, 1), int).tolist()
    mixed = json.loads(json.dumps(ints).replace("0", "true", 1))
    cases = [
        ("POST", predict, {**images, "instances": _nested("x", 65)}, "nested more than 64"),
        ("POST", predict, {**images, "instances": _nested("x", 900)}, ""),
        ("POST", predict, '{"signature_name": "serve_images", "instances": ["\\ud800"]}',
         "not valid UTF-8"),
        ("POST", predict, {"instances": mixed}, "Type: Bool is not of expected type: uint8"),
        ("POST", f"/v1/models/{model}/versions/{'9' * 5000}:predict", {"instances": ints},
         "Failed to convert version: 9999"),
        ("GET", f"/v1/models/{model}/versions/{'9' * 5000}", None, "Failed to convert version"),
        ("POST", f"/v1/models/{model}/versions/%D9%A1:predict", {"instances": ints},
         "Malformed request"),
    ]
    for method, path, body, words in cases:
        status, answer = call(port, method, path, body)
        assert status == 400, (path[:80], str(body)[:80], answer)
        _assert_one_line(answer, words)
        assert _predict(port, model, ints)[0] == 200


def test_slow_clients_are_cut_off_and_others_still_served(served):
    process, port, model = served
    memory = memory_mib(process.pid)
    # 250 connections each sending a request line a byte at a time (slowloris).
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(250)]
    deadline = time.monotonic() + 3
    request = f"GET /v1/models/{model} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    sent = 0
    while time.monotonic() < deadline:
        for connection in slow:
            try:
                connection.send(request[sent:sent + 1])
            except OSError:
                pass
        sent += 1
        if sent == 2:  # Others are answered meanwhile.
            assert call(port, "GET", f"/v1/models/{model}")[0] == 200
        time.sleep(0.5)
    for connection in slow:  # Closed by the server after --header_timeout_seconds=1.
        connection.settimeout(5)
        try:
            assert connection.recv(100) == b""
        except ConnectionResetError:
            pass
        connection.close()
    # A body that trickles in is refused once --body_timeout_seconds=1 has passed.
    connection = socket.create_connection(("127.0.0.1", port))
    connection.send(f"POST /v1/models/{model}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Content-Length: 1000\r\n\r\n{".encode())
    connection.settimeout(10)
    assert connection.recv(1000).startswith(b"HTTP/1.1 408")
    connection.close()
    assert call(port, "GET", f"/v1/models/{model}")[0] == 200
    assert memory_mib(process.pid) - memory < 50


def test_connections_beyond_the_limit_are_closed_at_once(export_dir):
    model = os.path.basename(export_dir)
    with running_server(export_dir, max_connections=8) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        try:
            assert extra.recv(100) == b""
        except ConnectionResetError:
            pass
        for connection in held:
            connection.close()
        time.sleep(0.2)
        assert call(port, "GET", f"/v1/models/{model}")[0] == 200
        _, metrics = _metrics(port)
        assert 'keras_tutorial_refused_requests_total{reason="connections"} 1.0' in metrics


def test_gzip_bodies_are_decompressed_within_the_limit(served, bordered_arrays):
    process, port, model = served
    body = json.dumps({"instances": bordered_arrays.x_test[:4].tolist()}).encode()
    plain = call(port, "POST", f"/v1/models/{model}:predict", body)
    assert plain[0] == 200
    zipped = {"Content-Encoding": "gzip"}
    assert call(port, "POST", f"/v1/models/{model}:predict", gzip.compress(body), zipped) == plain
    peak = memory_mib(process.pid, "VmHWM")
    bomb = gzip.compress(b"[" * (LIMIT * 50))  # 50 MB that compress to 50 kB.
    assert len(bomb) < LIMIT
    status, answer = call(port, "POST", f"/v1/models/{model}:predict", bomb, zipped)
    assert status == 413
    _assert_one_line(answer, f"limit of {LIMIT} bytes")
    assert memory_mib(process.pid, "VmHWM") - peak < 20
    status, answer = call(port, "POST", f"/v1/models/{model}:predict", body[:-9] + b"not gzip",
                          zipped)
    assert status == 400
    _assert_one_line(answer, "not valid gzip")
    status, answer = call(port, "POST", f"/v1/models/{model}:predict", body,
                          {"Content-Encoding": "br"})
    assert status == 415
    _assert_one_line(answer, "'br' is not supported")


def test_error_messages_show_no_path_of_the_server(tmp_path, export_dir):
    served = str(tmp_path / "served")
    shutil.copytree(export_dir, served)
    os.makedirs(os.path.join(served, "3"))
    with open(os.path.join(served, "3", "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    with running_server(served) as port:
        status, answer = call(port, "GET", "/v1/models/served/versions/3")
        entry, = answer["model_version_status"]
        message = entry["status"]["error_message"]
        assert entry["state"] == "END" and message
        assert str(tmp_path) not in message and os.getcwd() not in message, message
        for method, path in [("GET", "/v1/models/served/versions/8/metadata"),
                             ("GET", "/nowhere"), ("PUT", "/v1/models/served")]:
            status, answer = call(port, method, path)
            assert status in (400, 404) and str(tmp_path) not in answer["error"], answer


def _metrics(port: int) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/monitoring/prometheus/metrics")
    response = connection.getresponse()
    return response.status, response.read().decode()


def test_metrics_count_requests_by_model_version_api_and_status(export_dir):
    model = os.path.basename(export_dir)
    with running_server(export_dir) as port:
        image = np.zeros((2, 28, 28, 1), int).tolist()
        for _ in range(3):
            assert _predict(port, model, image)[0] == 200
        assert _predict(port, model, [[1]])[0] == 400
        for name in ("x1", "x2", "x3"):  # Unknown names share one label.
            assert _predict(port, name, image)[0] == 404
        call(port, "GET", f"/v1/models/{model}/metadata")
        status, text = _metrics(port)
    assert status == 200
    line = ('keras_tutorial_requests_total{{api="{}",model="{}",protocol="rest",status="{}",'
            'version="{}"}} {}')
    assert line.format("predict", model, "OK", 1, "3.0") in text, text
    assert line.format("predict", model, "INVALID_ARGUMENT", 1, "1.0") in text, text
    assert line.format("predict", "other", "NOT_FOUND", "", "3.0") in text, text
    assert line.format("get_model_metadata", model, "OK", 1, "1.0") in text, text
    assert 'model="other"' in text and 'model="x1"' not in text
    assert f'keras_tutorial_predict_batch_size_sum{{model="{model}",protocol="rest"}} 6.0' in text
    assert "keras_tutorial_request_latency_seconds_bucket" in text
