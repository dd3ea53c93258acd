"""Serve an export directory over TF Serving's REST and gRPC APIs, with a page to draw on.

    python -m keras_tutorial.serve --export_dir=saved_models/cnn

Serves every complete version of the export directory (numbered subdirectories holding
`saved_model.pb`), the newest for requests that name none, and picks up versions that appear
while it runs: REST at http://127.0.0.1:8501/v1/models/<name>, gRPC on port 8500, the page at
http://127.0.0.1:8501/, Prometheus metrics at /monitoring/prometheus/metrics (docs/serving.md).

Safe to leave running on a laptop: it listens on 127.0.0.1, refuses other sites' pages, slow
clients, oversized bodies and image bombs. It is for development and demonstrations;
production serves the same export directory with TF Serving or KServe.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, NamedTuple

from absl import flags

from keras_tutorial import cli

try:
    import uvicorn

    from keras_tutorial import guard
except ModuleNotFoundError as missing:  # Starlette or uvicorn: the serve extra.
    cli.fail(f"{missing.name} is not installed: serving needs the serve extra, "
             "pip install 'keras-tutorial[serve]'")

from keras_tutorial.batching import Batcher
from keras_tutorial.errors import UserError
from keras_tutorial.metrics import Metrics

if TYPE_CHECKING:  # Imported by main, once the flags are good: they import TensorFlow.
    import grpc

    from keras_tutorial.repository import Repository

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501  # TF Serving's REST port.
DEFAULT_GRPC_PORT = 8500  # TF Serving's gRPC port.
DEFAULT_POLL_SECONDS = 1.0
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_TIMEOUT_MICROS = 2000


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6), or a one-line error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except (OSError, UnicodeError) as e:
        raise UserError(f"cannot listen on {host}:{port}: {e}") from None


def define_flags() -> None:
    flags.DEFINE_string("export_dir", None, "Export directory holding versions 1, 2, ...",
                        required=True)
    flags.DEFINE_string("model_name", None,
                        "Name in the URLs, /v1/models/<name> (default: the export directory's "
                        "name).")
    flags.DEFINE_string("host", DEFAULT_HOST, "Address to listen on; 0.0.0.0 or :: exposes the "
                        "server to the network.")
    flags.DEFINE_integer("port", DEFAULT_PORT, "Port to listen on (TF Serving's REST port).",
                         lower_bound=0, upper_bound=65535)
    flags.DEFINE_integer("grpc_port", DEFAULT_GRPC_PORT, "Port for TF Serving's gRPC API "
                         "(PredictionService, ModelService) on the same --host; 0 turns it "
                         "off.", lower_bound=0, upper_bound=65535)
    flags.DEFINE_integer("max_request_bytes", guard.DEFAULT_MAX_REQUEST_BYTES,
                         "Larger request bodies (as sent, and once gzip-decompressed) are "
                         "refused with HTTP 413, larger gRPC messages with RESOURCE_EXHAUSTED.",
                         lower_bound=1)
    flags.DEFINE_list("allowed_hosts", [], "Host names to answer besides the address served "
                      "and localhost, e.g. mybox.local ('*': any); other Host headers are "
                      "refused, against DNS rebinding.")
    flags.DEFINE_list("cors_origin", [], "Origins whose web pages may call the API, e.g. "
                      "http://localhost:3000 ('*': any), as TF Serving's "
                      "--rest_api_enable_cors_support; other cross-origin requests are refused.")
    flags.DEFINE_integer("max_connections", guard.DEFAULT_MAX_CONNECTIONS,
                         "Connections beyond this many are closed at once.", lower_bound=1)
    flags.DEFINE_float("header_timeout_seconds", guard.DEFAULT_HEADER_SECONDS,
                       "A connection whose request headers take longer is closed.",
                       lower_bound=0.001)
    flags.DEFINE_float("body_timeout_seconds", guard.DEFAULT_BODY_SECONDS,
                       "A request body that takes longer to arrive is refused with HTTP 408.",
                       lower_bound=0.001)
    flags.DEFINE_float("file_system_poll_wait_seconds", DEFAULT_POLL_SECONDS,
                       "Seconds between looks for new versions (0: only at startup), as TF "
                       "Serving's flag of that name.", lower_bound=0)
    flags.DEFINE_bool("enable_batching", False, "Run concurrent requests to one signature as one "
                      "batch, as TF Serving's flag of that name.")
    flags.DEFINE_integer("max_batch_size", DEFAULT_MAX_BATCH_SIZE,
                         "Most examples in one batch (with --enable_batching).", lower_bound=1)
    flags.DEFINE_integer("batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS,
                         "How long a batch waits to fill (with --enable_batching).",
                         lower_bound=0)


class Servers(NamedTuple):
    """What `main` runs: the versions, the REST socket, the gRPC server (None: off), and
    their metrics."""

    repository: Repository
    sock: socket.socket
    grpc_server: grpc.Server | None
    grpc_port: int
    metrics: Metrics


def _prepare(argv: list[str]) -> Servers:
    """The model's versions, loaded, the listening socket and the gRPC server, started; bad
    input as a UserError."""
    from keras_tutorial import grpc_api  # TensorFlow, once the flags are good.
    from keras_tutorial.repository import Repository
    from keras_tutorial.versions import check_export_dir

    FLAGS = flags.FLAGS
    cli.no_arguments(argv)
    export_dir = os.path.normpath(FLAGS.export_dir)
    name = FLAGS.model_name or os.path.basename(os.path.abspath(export_dir))
    if not name or "/" in name or ":" in name:
        raise UserError(f"model name '{name}' cannot appear in /v1/models/<name> URLs")
    check_export_dir(export_dir, version_flag=False)
    sock = listen(FLAGS.host, FLAGS.port)
    batcher = (Batcher(FLAGS.max_batch_size, FLAGS.batch_timeout_micros / 1e6)
               if FLAGS.enable_batching else None)
    repository = Repository(export_dir, name, batcher)
    repository.refresh()
    metrics = Metrics(name)
    grpc_server, grpc_port = None, 0
    if FLAGS.grpc_port:
        try:
            grpc_server, grpc_port = grpc_api.start_server(
                repository, FLAGS.host, FLAGS.grpc_port, metrics, FLAGS.max_request_bytes)
        except UserError as e:
            raise UserError(f"{e} (--grpc_port picks another port; 0 turns gRPC off)") from None
    return Servers(repository, sock, grpc_server, grpc_port, metrics)


def main(argv: list[str]) -> None:
    from keras_tutorial import app  # TensorFlow, once the flags are good.

    FLAGS = flags.FLAGS
    repository, sock, grpc_server, grpc_port, metrics = _prepare(argv)
    host, port = sock.getsockname()[:2]
    address = f"[{host}]" if ":" in host else host
    versions = ", ".join(map(str, sorted(repository.versions)))
    grpc_note = f"; gRPC on {address}:{grpc_port}" if grpc_server else ""
    print(f"Serving {repository.name} (versions {versions}) on http://{address}:{port}/ ; "
          f"REST API at /v1/models/{repository.name}{grpc_note}", flush=True)
    policy = guard.Policy.of(FLAGS.allowed_hosts, FLAGS.cors_origin)
    server_app = app.create_app(repository, FLAGS.max_request_bytes,
                                FLAGS.file_system_poll_wait_seconds, policy,
                                FLAGS.body_timeout_seconds, metrics)
    config = uvicorn.Config(server_app, log_level="warning", access_log=False,
                            http=guard.protocol(FLAGS.header_timeout_seconds,
                                                FLAGS.max_connections, metrics.refused))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl-C: uvicorn has shut down gracefully and raised the signal again.
    finally:
        if grpc_server is not None:
            grpc_server.stop(grace=5).wait()


if __name__ == "__main__":
    cli.run(main, define_flags)
