"""Load on the REST server: `python -m benchmarks.serve_load --export_dir=saved_models/cnn`.

Starts `python -m keras_tutorial.serve` on a free loopback port, and for each batch size sends
`serving_default` predict requests (row format, uint8 pixels) from `--clients` concurrent
keep-alive connections for `--seconds` (at most `--max_requests` in all); then calls the same
signature in this process from as many threads for as long. Prints requests/s, images/s, p50
and p99 latency, errors and the server's resident memory at the start and end of each load,
as a Markdown table, and writes them as JSON to `--output` if given. Each entry of
`--server_flags` (a `;`-separated list of flag sets) is one server run, so variants compare
within one run of this machine, whose speed drifts.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

from absl import app, flags
import numpy as np

flags.DEFINE_string("export_dir", None, "Export directory to serve.", required=True)
flags.DEFINE_integer("clients", 32, "Concurrent clients (threads, one connection each).",
                     lower_bound=1)
flags.DEFINE_float("seconds", 60.0, "Seconds of load per batch size and variant.",
                   lower_bound=0.1)
flags.DEFINE_integer("max_requests", 200_000, "At most this many requests per load.",
                     lower_bound=1)
flags.DEFINE_list("batch_sizes", ["1", "32"], "Images per request.")
flags.DEFINE_string("server_flags", "", "Server variants to compare: `;` between variants, "
                    "spaces between the flags of one (the empty variant: the defaults).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS

_SEED = 0
_STARTUP_SECONDS = 120
_RSS_EVERY_SECONDS = 5.0


def request_body(batch_size: int) -> bytes:
    """A predict request in TF Serving's row format: `batch_size` random uint8 images."""
    images = np.random.default_rng(_SEED).integers(0, 256, (batch_size, 28, 28, 1))
    return json.dumps({"instances": images.tolist()}).encode()


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def start_server(export_dir: str, extra_flags: list[str]) -> tuple[subprocess.Popen, int]:
    """The server on a free loopback port, once its banner says it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_tutorial.serve", f"--export_dir={export_dir}",
         "--port=0", *extra_flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + _STARTUP_SECONDS
    for line in process.stdout:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if match:
            return process, int(match[1])
        if time.monotonic() > deadline:
            break
    process.kill()
    raise SystemExit(f"error: the server did not start (exit status {process.wait()})")


def sample_rss(pid: int, samples: list[float], done: threading.Event) -> None:
    """The server's resident memory every few seconds, until `done`."""
    while not done.wait(_RSS_EVERY_SECONDS):
        samples.append(rss_mib(pid))


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_clients(send, clients: int, seconds: float, max_requests: int) -> dict:
    """Calls `send()` from `clients` threads until time or the request budget runs out."""
    latencies, errors, budget = [], [0], [max_requests]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        state = {}
        while time.monotonic() < deadline:
            with lock:
                if budget[0] == 0:
                    return
                budget[0] -= 1
            start = time.perf_counter()
            ok = send(state)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors[0] += not ok

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


def http_sender(port: int, path: str, body: bytes):
    """A `send` that POSTs `body` over the calling thread's own keep-alive connection."""
    headers = {"Content-Type": "application/json"}

    def send(state: dict) -> bool:
        try:
            connection = state.setdefault("connection",
                                          http.client.HTTPConnection("127.0.0.1", port, timeout=60))
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            state.pop("connection").close()
            return False

    return send


def serve_load(export_dir: str, model: str, extra_flags: list[str], batch_sizes: list[int]
               ) -> dict:
    """One server run: for each batch size, a short warm-up and then the timed load."""
    process, port = start_server(export_dir, extra_flags)
    try:
        results = {}
        for batch_size in batch_sizes:
            send = http_sender(port, f"/v1/models/{model}:predict", request_body(batch_size))
            run_clients(send, FLAGS.clients, min(3.0, FLAGS.seconds), FLAGS.max_requests)
            samples, done = [rss_mib(process.pid)], threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(process.pid, samples, done))
            sampler.start()
            result = run_clients(send, FLAGS.clients, FLAGS.seconds, FLAGS.max_requests)
            done.set()
            sampler.join()
            samples.append(rss_mib(process.pid))
            results[batch_size] = {**result, "images_per_sec":
                                   round(result["requests_per_sec"] * batch_size, 1),
                                   "rss_start_mib": round(samples[0], 1),
                                   "rss_max_mib": round(max(samples), 1),
                                   "rss_end_mib": round(samples[-1], 1),
                                   "rss_samples_mib": [round(s, 1) for s in samples]}
        return results
    finally:
        stop_server(process)


def in_process_load(export_dir: str, batch_sizes: list[int]) -> dict:
    """The newest version's `serving_default` called from this process's threads."""
    import tensorflow as tf

    newest = max(int(name) for name in os.listdir(export_dir) if name.isdigit())
    signature = tf.saved_model.load(os.path.join(export_dir, str(newest))
                                    ).signatures["serving_default"]
    results = {}
    for batch_size in batch_sizes:
        images = np.asarray(json.loads(request_body(batch_size))["instances"], np.uint8)

        def send(state: dict) -> bool:
            signature(images=tf.constant(images))
            return True

        run_clients(send, FLAGS.clients, min(3.0, FLAGS.seconds), FLAGS.max_requests)
        result = run_clients(send, FLAGS.clients, FLAGS.seconds, FLAGS.max_requests)
        results[batch_size] = {**result, "images_per_sec":
                               round(result["requests_per_sec"] * batch_size, 1)}
    return results


def table(results: dict) -> str:
    """The results as a Markdown table, one row per variant and batch size."""
    lines = ["| variant | batch | requests/s | images/s | p50 ms | p99 ms | errors | "
             "server RSS MiB: start, max, end |", "|---|---|---|---|---|---|---|---|"]
    for variant, by_batch in results.items():
        for batch_size, r in by_batch.items():
            memory = (f"{r['rss_start_mib']}, {r['rss_max_mib']}, {r['rss_end_mib']}"
                      if "rss_start_mib" in r else "")
            lines.append(f"| {variant} | {batch_size} | {r['requests_per_sec']} | "
                         f"{r['images_per_sec']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['errors']} | {memory} |")
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
        results[label] = serve_load(export_dir, model, variant.split(), batch_sizes)
    results["in-process signature"] = in_process_load(export_dir, batch_sizes)
    print(table(results))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump({"clients": FLAGS.clients, "seconds": FLAGS.seconds,
                       "export_dir": export_dir, "results": results}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
