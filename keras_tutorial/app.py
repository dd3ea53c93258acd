"""The HTTP server's app: TF Serving's REST API, the page to draw on, and the metrics.

Requests are answered by the versions' own signatures, loaded with `tf.saved_model.load`: no
Keras, no training code, so the answers are TF Serving's. `rest.py` holds the protocol,
`repository.py` the versions, `guard.py` what is refused before the API, `metrics.py` the
counts; this module puts them together as a Starlette app, which `serve.py` runs.

The page at `/` (`keras_tutorial/page/`) talks only to the REST API. It prepares drawn digits as
MNIST's were prepared (fitted into 20x20, centred by centre of mass in 28x28) itself, in the
browser, and sends that 28x28 PNG to `serve_images`; dropped or pasted files are sent as they
are. The server does not re-centre anything: `serve_images` must answer photos and
Fashion-MNIST images exactly as TF Serving answers them, and a drawing is the one input whose
strokes the page knows to be a digit on an empty canvas.
"""

from __future__ import annotations

import contextlib
import html
import importlib.resources
import threading
import time
from typing import NamedTuple

from absl import logging
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keras_tutorial import guard, rest
from keras_tutorial.metrics import PATH as METRICS_PATH, Metrics
from keras_tutorial.repository import Repository

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
               poll_seconds: float = 0.0, policy: guard.Policy = guard.Policy(),
               body_seconds: float = guard.DEFAULT_BODY_SECONDS,
               metrics: Metrics | None = None) -> Starlette:
    """The Starlette app: the REST API under /v1/, the page at /, the metrics, and a thread
    that polls the export directory for versions every `poll_seconds` (0: never; `serve`
    polls every --file_system_poll_wait_seconds)."""
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
