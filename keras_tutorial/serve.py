"""A development server that speaks TensorFlow Serving's REST API, and a draw-and-classify page.

`python -m keras_tutorial.serve --export_dir=saved_models/cnn` serves every complete version of
the export directory (numbered subdirectories holding `saved_model.pb`; hidden `.staging-*`
directories are an export still being written), the newest for requests that name none, and
picks up versions that appear while it runs. Requests are answered by the versions' own
signatures, loaded with `tf.saved_model.load`: no Keras, no training code, so the answers are
TF Serving's. `rest.py` holds the protocol, `repository.py` the versions, `batching.py` the
optional merging of concurrent requests (`--enable_batching`); this module the app and the CLI.

The page at `/` (`keras_tutorial/page/`) talks only to the REST API. It prepares drawn digits as
MNIST's were prepared (fitted into 20x20, centred by centre of mass in 28x28) itself, in the
browser, and sends that 28x28 PNG to `serve_images`; dropped or pasted files are sent as they
are. The server does not re-centre anything: `serve_images` must answer photos and
Fashion-MNIST images exactly as TF Serving answers them, and a drawing is the one input whose
strokes the page knows to be a digit on an empty canvas.

Safe by default: it listens on 127.0.0.1, serves no files but the page's and the models', and
reads request bodies only up to `--max_request_bytes`. It is for development and
demonstrations; production serves the same export directory with TF Serving or KServe.
"""

from __future__ import annotations

import contextlib
import html
import importlib.resources
import os
import socket
import threading
import time
from typing import NamedTuple

from absl import flags, logging
import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
import uvicorn

from keras_tutorial import cli

cli.import_tensorflow()  # Before any module that imports TensorFlow.

from keras_tutorial import grpc_api, guard, rest  # noqa: E402
from keras_tutorial.batching import Batcher  # noqa: E402
from keras_tutorial.errors import UserError  # noqa: E402
from keras_tutorial.metrics import PATH as METRICS_PATH, Metrics  # noqa: E402
from keras_tutorial.repository import Repository, check_export_dir  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501  # TF Serving's REST port.
DEFAULT_POLL_SECONDS = 1.0
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_TIMEOUT_MICROS = 2000
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/page.js": ("page.js", "text/javascript; charset=utf-8"),
              "/prepare.js": ("prepare.js", "text/javascript; charset=utf-8"),
              "/page.css": ("page.css", "text/css; charset=utf-8")}
_MODEL_META = '<meta name="model-name" content="">'
_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


class Answer(NamedTuple):
    """A predict request's JSON answer, the version that gave it, and how many examples."""

    payload: dict
    version: int
    examples: int


def predict(repository: Repository, model: str, number: int | None, verb: str, body: bytes,
            ) -> Answer:
    """One predict request, parsed and answered in TF Serving's order: JSON, signature name,
    servable, signature, tensors, run."""
    document = rest.parse_body(body)
    name = rest.signature_name(document)
    version = repository.find(model, number)
    if name not in version.inputs:
        raise rest.invalid(f'Serving signature name: "{name}" not found in signature def')
    if verb != "predict":
        method = version.signature_defs[name]["method_name"]
        raise rest.invalid(f"Expected {verb} signature method_name to be "
                           f"tensorflow/serving/{verb}. Was: {method}")
    tensors, row_format = rest.request_tensors(document, version.inputs[name])
    outputs = repository.run(version, name, tensors)
    examples = min((len(value) for value in tensors.values() if value.ndim), default=1)
    return Answer(rest.format_outputs(outputs, row_format), version.number, examples)


def create_app(repository: Repository,
               max_request_bytes: int = guard.DEFAULT_MAX_REQUEST_BYTES,
               poll_seconds: float = DEFAULT_POLL_SECONDS, policy: guard.Policy = guard.Policy(),
               body_seconds: float = guard.DEFAULT_BODY_SECONDS,
               metrics: Metrics | None = None) -> Starlette:
    """The Starlette app: the REST API under /v1/, the page at /, the metrics, and a thread
    that polls the export directory for versions every `poll_seconds` (0: never)."""
    metrics = metrics or Metrics(repository.name)

    def json_response(payload: dict, status: int = 200) -> Response:
        return Response(rest.dumps(payload), status, media_type="application/json")

    def error(status: int, message: str) -> Response:
        return json_response({"error": message}, status)

    async def api(request: Request) -> Response:
        start, target, code, answer = time.perf_counter(), None, "OK", None
        try:
            target = rest.route(request.method, _raw_path(request.scope))
            if target.verb == "status":
                return json_response(repository.status(target.model, target.version))
            if target.verb == "metadata":
                return json_response(repository.metadata(target.model, target.version))
            body = await guard.read_body(request, max_request_bytes, body_seconds)
            answer = await run_in_threadpool(predict, repository, target.model, target.version,
                                             target.verb, body)
            return json_response(answer.payload)
        except rest.RestError as e:
            code = e.code
            return error(e.http_status, str(e))
        except guard.Refused as e:
            metrics.refused(e.reason)
            code = _REFUSED_CODES.get(e.status, "INVALID_ARGUMENT")
            return error(e.status, str(e))
        finally:
            if target is not None:
                version = (answer.version if answer
                           else repository.answering(target.model, target.version))
                metrics.record("rest", _API_NAMES.get(target.verb, target.verb), target.model,
                               version, code, time.perf_counter() - start,
                               answer and answer.examples)

    pages = {path: _page(file, media, repository.name) for path, (file, media)
             in PAGE_FILES.items()}

    async def page(request: Request) -> Response:
        return pages[request.scope["path"]]

    async def prometheus(request: Request) -> Response:
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        return error(exc.status_code,
                     f"{exc.detail}: {request.method} {rest.cut(_raw_path(request.scope))}")

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette then raises it again, and uvicorn logs the traceback; the client gets no
        # detail that could show the server's files.
        return error(500, f"Internal error ({type(exc).__name__}); the server's log has the "
                          "details")

    def refused(exc: guard.Refused) -> Response:
        return error(exc.status, str(exc))

    @contextlib.asynccontextmanager
    async def lifespan(_):
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(repository, poll_seconds, stop),
                                   name="version-watcher", daemon=True)
        watcher.start()
        yield
        stop.set()
        watcher.join()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    routes = [Route(path, page, methods=["GET"]) for path in PAGE_FILES]
    routes.append(Route(METRICS_PATH, prometheus, methods=["GET"]))
    routes.append(Route("/v1/{rest:path}", api, methods=methods))
    middleware = [Middleware(guard.GuardMiddleware, policy=policy, on_refused=metrics.refused,
                             respond=refused)]
    if policy.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=sorted(policy.cors_origins),
            allow_methods=["GET", "POST"], allow_headers=["Content-Type", "Content-Encoding"],
            max_age=600))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                     exception_handlers={404: http_error, 405: http_error,
                                         Exception: internal_error})


# The metrics' API names (gRPC's methods), for REST's verbs.
_API_NAMES = {"status": "get_model_status", "metadata": "get_model_metadata"}
# The canonical codes counted for requests refused before the API (TF Serving has no such).
_REFUSED_CODES = {408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT"}


def _raw_path(scope) -> str:
    """The request's path as its request line has it, never a URL rebuilt from its headers."""
    return (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")


def _page(file: str, media_type: str, model_name: str):
    """A file of the packaged page, read once; index.html learns the model's name."""
    content = importlib.resources.files("keras_tutorial").joinpath("page", file).read_text()
    if file == "index.html":
        content = content.replace(_MODEL_META, _MODEL_META.replace(
            'content=""', f'content="{html.escape(model_name, quote=True)}"'))
    return Response(content, media_type=media_type, headers=_SECURITY_HEADERS)


def _watch(repository: Repository, poll_seconds: float, stop: threading.Event) -> None:
    """Polls the export directory until `stop` is set, as TF Serving's file system source does;
    a directory that cannot be read for a while leaves the loaded versions serving."""
    while poll_seconds > 0 and not stop.wait(poll_seconds):
        try:
            repository.refresh()
        except OSError as e:
            logging.warning("Cannot read %s: %s", repository.export_dir, e)


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
    flags.DEFINE_integer("grpc_port", grpc_api.DEFAULT_PORT, "Port for TF Serving's gRPC API "
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
    FLAGS = flags.FLAGS
    cli.no_arguments(argv)
    export_dir = os.path.normpath(FLAGS.export_dir)
    name = FLAGS.model_name or os.path.basename(os.path.abspath(export_dir))
    if not name or "/" in name or ":" in name:
        raise UserError(f"model name '{name}' cannot appear in /v1/models/<name> URLs")
    check_export_dir(export_dir)
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
    FLAGS = flags.FLAGS
    repository, sock, grpc_server, grpc_port, metrics = _prepare(argv)
    host, port = sock.getsockname()[:2]
    address = f"[{host}]" if ":" in host else host
    versions = ", ".join(map(str, sorted(repository.versions)))
    grpc_note = f"; gRPC on {address}:{grpc_port}" if grpc_server else ""
    print(f"Serving {repository.name} (versions {versions}) on http://{address}:{port}/ ; "
          f"REST API at /v1/models/{repository.name}{grpc_note}", flush=True)
    policy = guard.Policy.of(FLAGS.allowed_hosts, FLAGS.cors_origin)
    app = create_app(repository, FLAGS.max_request_bytes, FLAGS.file_system_poll_wait_seconds,
                     policy, FLAGS.body_timeout_seconds, metrics)
    config = uvicorn.Config(app, log_level="warning", access_log=False,
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
