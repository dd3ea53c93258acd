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

from absl import flags, logging
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
import uvicorn

from keras_tutorial import cli

cli.import_tensorflow()  # Before any module that imports TensorFlow.

from keras_tutorial import rest  # noqa: E402
from keras_tutorial.batching import Batcher  # noqa: E402
from keras_tutorial.errors import UserError  # noqa: E402
from keras_tutorial.repository import Repository, check_export_dir  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501  # TF Serving's REST port.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
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


def predict(repository: Repository, model: str, number: int | None, verb: str, body: bytes,
            ) -> dict:
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
    return rest.format_outputs(repository.run(version, name, tensors), row_format)


def create_app(repository: Repository, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               poll_seconds: float = DEFAULT_POLL_SECONDS) -> Starlette:
    """The Starlette app: the REST API under /v1/, the page at /, and a thread that polls the
    export directory for versions every `poll_seconds` (0: never)."""
    def json_response(payload: dict, status: int = 200) -> Response:
        return Response(rest.dumps(payload), status, media_type="application/json")

    def error(status: int, message: str) -> Response:
        return json_response({"error": message}, status)

    async def api(request: Request) -> Response:
        try:
            target = rest.route(request.method, request.url.path)
            if target.verb == "status":
                return json_response(repository.status(target.model, target.version))
            if target.verb == "metadata":
                return json_response(repository.metadata(target.model, target.version))
            body = await _read_body(request, max_request_bytes)
            if body is None:
                return error(413, f"Request body is larger than the server's limit of "
                                  f"{max_request_bytes} bytes (--max_request_bytes)")
            return json_response(await run_in_threadpool(
                predict, repository, target.model, target.version, target.verb, body))
        except rest.RestError as e:
            return error(e.http_status, str(e))

    pages = {path: _page(file, media, repository.name) for path, (file, media)
             in PAGE_FILES.items()}

    async def page(request: Request) -> Response:
        return pages[request.url.path]

    async def http_error(request: Request, exc: Exception) -> Response:
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette then raises it again, and uvicorn logs the traceback.
        return error(500, " ".join(f"Internal error: {type(exc).__name__}: {exc}".split()))

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
    routes.append(Route("/v1/{rest:path}", api, methods=methods))
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: http_error, 405: http_error,
                                         Exception: internal_error})


async def _read_body(request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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
    flags.DEFINE_integer("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES,
                         "Larger request bodies are refused with HTTP 413.", lower_bound=1)
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


def _prepare(argv: list[str]) -> tuple[Repository, socket.socket]:
    """The model's versions, loaded, and the listening socket; bad input as a UserError."""
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
    return repository, sock


def main(argv: list[str]) -> None:
    FLAGS = flags.FLAGS
    repository, sock = _prepare(argv)
    host, port = sock.getsockname()[:2]
    address = f"[{host}]" if ":" in host else host
    versions = ", ".join(map(str, sorted(repository.versions)))
    print(f"Serving {repository.name} (versions {versions}) on http://{address}:{port}/ ; "
          f"REST API at /v1/models/{repository.name}", flush=True)
    config = uvicorn.Config(create_app(repository, FLAGS.max_request_bytes,
                                       FLAGS.file_system_poll_wait_seconds),
                            log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl-C: uvicorn has shut down gracefully and raised the signal again.


if __name__ == "__main__":
    cli.run(main, define_flags)
