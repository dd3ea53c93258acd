"""Load on the server: `python -m benchmarks.serve_load --export_dir=saved_models/cnn`.

Starts `python -m keras_tutorial.serve` on free loopback ports and, for each protocol (REST,
gRPC) and batch size, sends `serving_default` predict requests (REST's row format with uint8
pixels as JSON; gRPC's PredictRequest with a TensorProto, as TF Serving's clients write them)
from `--clients` concurrent connections for `--seconds` (at most `--max_requests` in all); then
calls the same signature in this process from as many threads for as long. Prints requests/s,
images/s, p50 and p99 latency, errors and the server's resident memory at the start, peak and
end of each load as a Markdown table, and writes them as JSON to `--output` if given.

Variants compare within one run of this machine, whose speed drifts: each `;`-separated entry
of `--server_flags` is one server run, and `--baseline_dir` (a checkout of an earlier commit,
e.g. from `git worktree add`) serves its own package as one more (REST only, if it has no
gRPC). `--first_request` also measures each signature's first request after a start, with the
export's warm-up requests and without them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
import numpy as np

flags.DEFINE_string("export_dir", None, "Export directory to serve.", required=True)
flags.DEFINE_integer("clients", 32, "Concurrent clients (threads, one connection each).",
                     lower_bound=1)
flags.DEFINE_float("seconds", 60.0, "Seconds of load per protocol, batch size and variant.",
                   lower_bound=0.1)
flags.DEFINE_integer("max_requests", 200_000, "At most this many requests per load.",
                     lower_bound=1)
flags.DEFINE_list("batch_sizes", ["1", "32"], "Images per request.")
flags.DEFINE_list("protocols", ["rest", "grpc"], "Protocols to load: rest, grpc.")
flags.DEFINE_string("server_flags", "", "Server variants to compare: `;` between variants, "
                    "spaces between the flags of one (the empty variant: the defaults).")
flags.DEFINE_string("baseline_dir", None, "A checkout of another commit whose server runs as "
                    "one more variant, e.g. `git worktree add /tmp/baseline HEAD~3`.")
flags.DEFINE_bool("first_request", False, "Also time each signature's first request after a "
                  "start, with and without the export's warm-up requests.")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS

_SEED = 0
_STARTUP_SECONDS = 180
_RSS_EVERY_SECONDS = 2.0
_WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def images(batch_size: int) -> np.ndarray:
    """`batch_size` random uint8 images, the same in every run."""
    return np.random.default_rng(_SEED).integers(0, 256, (batch_size, 28, 28, 1), np.uint8)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (VmRSS), or its peak (VmHWM), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kib / 1024


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def start_server(export_dir: str, extra_flags: list[str], package_dir: str | None = None,
                 ) -> tuple[subprocess.Popen, int]:
    """The server on a free loopback port, once its banner says it listens; `package_dir`
    serves the `keras_tutorial` package of another checkout."""
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_tutorial.serve", f"--export_dir={export_dir}",
         "--port=0", *extra_flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, cwd=package_dir, env={**os.environ, "PYTHONPATH": package_dir or ""})
    deadline = time.monotonic() + _STARTUP_SECONDS
    for line in process.stdout:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if match:
            return process, int(match[1])
        if time.monotonic() > deadline:
            break
    process.kill()
    raise SystemExit(f"error: the server did not start (exit status {process.wait()})")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_clients(send, clients: int, seconds: float, max_requests: int) -> dict:
    """Calls `send(state)` from `clients` threads until time or the request budget runs out."""
    latencies, errors, budget = [], [0], [max_requests]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        state = {}
        while time.monotonic() < deadline:
            with lock:
                if budget[0] == 0:
                    break
                budget[0] -= 1
            start = time.perf_counter()
            ok = send(state)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors[0] += not ok
        state.get("close", lambda: None)()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "errors": errors[0], "seconds": round(wall, 2),
            "requests_per_sec": round(len(latencies) / wall, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2)}


def rest_sender(port: int, model: str, batch_size: int):
    """A `send` that POSTs a row-format request over the calling thread's keep-alive
    connection."""
    body = json.dumps({"instances": images(batch_size).tolist()}).encode()
    headers = {"Content-Type": "application/json"}
    path = f"/v1/models/{model}:predict"

    def send(state: dict) -> bool:
        try:
            if "connection" not in state:
                state["connection"] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                state["close"] = state["connection"].close
            state["connection"].request("POST", path, body, headers)
            response = state["connection"].getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            state.pop("connection").close()
            return False

    return send


def grpc_sender(port: int, model: str, batch_size: int):
    """A `send` that calls Predict over the calling thread's own channel, as TF Serving's
    Python clients do."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images(batch_size)))

    def send(state: dict) -> bool:
        if "stub" not in state:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            state["stub"] = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            state["close"] = channel.close
        try:
            result = state["stub"].Predict.future(request, 60.0).result()
            return len(result.outputs["probabilities"].float_val) == batch_size * 10
        except grpc.RpcError:
            return False

    return send


def load(process: subprocess.Popen, send) -> dict:
    """A short warm-up, then the timed load, with the server's memory sampled throughout."""
    run_clients(send, FLAGS.clients, min(3.0, FLAGS.seconds), FLAGS.max_requests)
    samples, done = [rss_mib(process.pid)], threading.Event()

    def sample() -> None:
        while not done.wait(_RSS_EVERY_SECONDS):
            samples.append(rss_mib(process.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    result = run_clients(send, FLAGS.clients, FLAGS.seconds, FLAGS.max_requests)
    done.set()
    sampler.join()
    samples.append(rss_mib(process.pid))
    return {**result, "rss_start_mib": round(samples[0], 1),
            "rss_max_mib": round(max(samples), 1), "rss_end_mib": round(samples[-1], 1)}


def serve_load(export_dir: str, model: str, extra_flags: list[str], protocols: list[str],
               batch_sizes: list[int], package_dir: str | None = None) -> dict:
    """One server run: each protocol and batch size loaded in turn."""
    grpc_port = free_port() if "grpc" in protocols else 0
    if has_grpc(package_dir):
        extra_flags = [*extra_flags, f"--grpc_port={grpc_port}"]
    process, port = start_server(export_dir, extra_flags, package_dir)
    try:
        results = {}
        for protocol in protocols:
            for batch_size in batch_sizes:
                send = (rest_sender(port, model, batch_size) if protocol == "rest"
                        else grpc_sender(grpc_port, model, batch_size))
                result = load(process, send)
                results[f"{protocol} {batch_size}"] = {
                    **result, "protocol": protocol, "batch_size": batch_size,
                    "images_per_sec": round(result["requests_per_sec"] * batch_size, 1)}
        return results
    finally:
        stop_server(process)


def has_grpc(package_dir: str | None) -> bool:
    """Whether the server of a checkout (None: this one) has gRPC, which earlier ones lack."""
    serve = os.path.join(package_dir or os.path.dirname(os.path.dirname(__file__)),
                         "keras_tutorial", "serve.py")
    with open(serve) as f:
        return "grpc_port" in f.read()


def in_process_load(export_dir: str, batch_sizes: list[int]) -> dict:
    """The newest version's `serving_default` called from this process's threads."""
    import tensorflow as tf

    newest = max(int(name) for name in os.listdir(export_dir) if name.isdigit())
    signature = tf.saved_model.load(os.path.join(export_dir, str(newest))
                                    ).signatures["serving_default"]
    results = {}
    for batch_size in batch_sizes:
        batch = tf.constant(images(batch_size))
        send = lambda state: signature(images=batch) is not None  # noqa: E731
        run_clients(send, FLAGS.clients, min(3.0, FLAGS.seconds), FLAGS.max_requests)
        result = run_clients(send, FLAGS.clients, FLAGS.seconds, FLAGS.max_requests)
        results[f"in-process {batch_size}"] = {
            **result, "protocol": "in-process", "batch_size": batch_size,
            "images_per_sec": round(result["requests_per_sec"] * batch_size, 1)}
    return results


def first_requests(export_dir: str, model: str) -> dict:
    """Milliseconds of each signature's first REST request after a start, with the newest
    version's warm-up requests and (in a copy) without them."""
    newest = str(max(int(name) for name in os.listdir(export_dir) if name.isdigit()))
    png = _png(images(1)[0])
    bodies = {"serving_default": {"instances": images(1).tolist()},
              "serve_images": {"signature_name": "serve_images",
                               "instances": [{"b64": base64.b64encode(png).decode()}]}}
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        bare = os.path.join(scratch, model)
        shutil.copytree(os.path.join(export_dir, newest), os.path.join(bare, newest))
        os.remove(os.path.join(bare, newest, _WARMUP_FILE))
        for label, directory in (("with warm-up", export_dir), ("without warm-up", bare)):
            for signature, body in bodies.items():
                process, port = start_server(directory, ["--grpc_port=0"])
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    start = time.perf_counter()
                    connection.request("POST", f"/v1/models/{model}:predict", json.dumps(body))
                    response = connection.getresponse()
                    response.read()
                    elapsed = (time.perf_counter() - start) * 1000
                    second = time.perf_counter()
                    connection.request("POST", f"/v1/models/{model}:predict", json.dumps(body))
                    connection.getresponse().read()
                    results[f"{label}, {signature}"] = {
                        "status": response.status, "first_ms": round(elapsed, 1),
                        "second_ms": round((time.perf_counter() - second) * 1000, 1)}
                finally:
                    stop_server(process)
    return results


def _png(image: np.ndarray) -> bytes:
    import tensorflow as tf
    return tf.io.encode_png(image).numpy()


def table(results: dict) -> str:
    """The loads as a Markdown table, one row per variant, protocol and batch size."""
    lines = ["| variant | protocol | batch | requests/s | images/s | p50 ms | p99 ms | errors | "
             "server RSS MiB: start, max, end |", "|---|---|---|---|---|---|---|---|---|"]
    for variant, rows in results.items():
        for r in rows.values():
            memory = (f"{r['rss_start_mib']}, {r['rss_max_mib']}, {r['rss_end_mib']}"
                      if "rss_start_mib" in r else "")
            lines.append(f"| {variant} | {r['protocol']} | {r['batch_size']} | "
                         f"{r['requests_per_sec']} | {r['images_per_sec']} | {r['p50_ms']} | "
                         f"{r['p99_ms']} | {r['errors']} | {memory} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    export_dir = os.path.normpath(FLAGS.export_dir)
    model = os.path.basename(os.path.abspath(export_dir))
    batch_sizes = [int(size) for size in FLAGS.batch_sizes]
    results = {}
    for variant in FLAGS.server_flags.split(";"):
        label = f"server {variant.strip()}".strip()
        results[label] = serve_load(export_dir, model, variant.split(), FLAGS.protocols,
                                    batch_sizes)
    if FLAGS.baseline_dir:
        baseline = os.path.abspath(FLAGS.baseline_dir)
        protocols = FLAGS.protocols if has_grpc(baseline) else ["rest"]
        results["baseline"] = serve_load(export_dir, model, [], protocols, batch_sizes,
                                         baseline)
    results["signature"] = in_process_load(export_dir, batch_sizes)
    print(table(results))
    output = {"clients": FLAGS.clients, "seconds": FLAGS.seconds, "export_dir": export_dir,
              "results": results}
    if FLAGS.first_request:
        output["first_requests"] = first_requests(export_dir, model)
        print(json.dumps(output["first_requests"], indent=1))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(output, f, indent=1)


if __name__ == "__main__":
    app.run(main)
