"""What the HTTP server refuses before a request reaches the API, so that no web page, slow
client or small compressed body can make it spend more than a request's worth.

- **Foreign hosts** (DNS rebinding: a page whose name resolves to 127.0.0.1 talks to the server
  as its own origin): the `Host` header must name the address the connection came in on,
  `localhost` (on a loopback address), or a name in `--allowed_hosts`.
- **Foreign origins** (a page on another site POSTs `text/plain`, which needs no preflight): a
  request whose `Origin` is not the server's own is refused unless `--cors_origin` allows it;
  then the answers carry the CORS headers a browser needs (Starlette's CORSMiddleware).
- **Slow clients**: request headers must arrive within `header_seconds` of a connection or of
  the previous answer, and a body within `body_seconds`; at most `max_connections` are open.
- **Bodies**: at most `max_request_bytes` as sent and, `Content-Encoding: gzip` decompressed as
  TF Serving does, at most as many once decompressed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import zlib
from typing import Any, Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # A 12 MB photo in base64, 3,000 images as JSON.
DEFAULT_HEADER_SECONDS = 10.0
DEFAULT_BODY_SECONDS = 60.0
DEFAULT_MAX_CONNECTIONS = 256


class Refused(Exception):
    """A request refused with an HTTP status and a one-line message; `reason` labels it in
    the metrics."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.reason = status, reason


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which `Host` names and `Origin`s a server answers besides its own (`*`: any)."""

    allowed_hosts: frozenset[str] = frozenset()
    cors_origins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, allowed_hosts: list[str] | tuple[str, ...] = (),
           cors_origins: list[str] | tuple[str, ...] = ()) -> "Policy":
        return cls(frozenset(name.strip().lower() for name in allowed_hosts if name.strip()),
                   frozenset(origin.strip().rstrip("/").lower() for origin in cors_origins
                             if origin.strip()))

    def check(self, scope: Scope) -> None:
        """Raises Refused for a request from a foreign host or origin."""
        headers = Headers(scope=scope)
        host = headers.get("host")
        if host is not None and not self._host_allowed(host, scope.get("server")):
            raise Refused(403, f"Host '{_cut(host)}' is not allowed: this server answers its own "
                          "address or localhost; start it with --allowed_hosts=<name> to "
                          "answer another name", "host")
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host):
            raise Refused(403, f"Cross-origin request from '{_cut(origin)}' refused: start the "
                          "server with --cors_origin=<origin> to allow it", "origin")

    def _host_allowed(self, host: str, server: tuple[str, int] | None) -> bool:
        if "*" in self.allowed_hosts:
            return True
        name = _host_name(host)
        if name is None:
            return False
        if name in self.allowed_hosts:
            return True
        local = _ip(server[0]) if server else None
        if local is None:
            return False
        if local.is_loopback and (name == "localhost" or name.endswith(".localhost")):
            return True
        return _ip(name) == local

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.rstrip("/").lower()
        if "*" in self.cors_origins or origin in self.cors_origins:
            return True
        scheme, _, netloc = origin.partition("://")
        default_port = {"http": ":80", "https": ":443"}.get(scheme)
        return (host is not None and default_port is not None
                and netloc.removesuffix(default_port) == host.lower().removesuffix(default_port))


def _host_name(host: str) -> str | None:
    """The name or address in a Host header (`name`, `name:port`, `[v6]:port`), lowercased;
    None if it is not one."""
    host = host.strip().lower()
    if host.startswith("["):
        address, _, port = host[1:].partition("]")
        name = address if _ip(address) is not None else None
    else:
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
    if name is None or (port and not port.lstrip(":").isdigit()) or not name:
        return None
    if any(not (c.isascii() and (c.isalnum() or c in "-._:")) for c in name):
        return None
    return name


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, IPv4-mapped IPv6 ones as IPv4; None if `text` is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _cut(text: str, limit: int = 60) -> str:
    text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= limit else text[:limit] + "..."


class GuardMiddleware:
    """ASGI middleware: refuses foreign hosts and origins before the app sees the request."""

    def __init__(self, app: ASGIApp, policy: Policy, on_refused: Callable[[str], None],
                 respond: Callable[[Refused], Response]):
        self.app, self.policy = app, policy
        self.on_refused, self.respond = on_refused, respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.policy.check(scope)
            except Refused as refused:
                self.on_refused(refused.reason)
                await self.respond(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int, seconds: float) -> bytes:
    """The request body, decompressed if gzip-encoded; Refused if it is larger than `limit`
    bytes (sent or decompressed), takes more than `seconds` to arrive, or is not valid gzip."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise Refused(415, f"Content-Encoding '{_cut(encoding)}' is not supported: send the "
                      "body as it is or gzip-compressed", "content_encoding")
    too_large = Refused(413, f"Request body is larger than the server's limit of {limit} "
                        "bytes (--max_request_bytes)", "too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    gzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "identity" else None
    chunks, sent, size = [], 0, 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise Refused(408, f"Request body did not arrive within {seconds:g} seconds",
                          "body_timeout") from None
        sent += len(chunk)
        if sent > limit:
            raise too_large
        for piece in _inflate(gzip, chunk, limit - size) if gzip else [chunk]:
            size += len(piece)
            if size > limit:
                raise too_large
            chunks.append(piece)
    if gzip is not None and (not gzip.eof or gzip.unused_data):
        raise _not_gzip()
    return b"".join(chunks)


def _inflate(gzip: Any, data: bytes, room: int) -> list[bytes]:
    """Decompresses `data`, stopping once more than `room` bytes came out."""
    pieces, size = [], 0
    try:
        while data and size <= room:
            piece = gzip.decompress(data, room - size + 1)
            pieces.append(piece)
            size += len(piece)
            data = gzip.unconsumed_tail
    except zlib.error:
        raise _not_gzip() from None
    return pieces


def _not_gzip() -> Refused:
    return Refused(400, "Request body is not valid gzip data (Content-Encoding: gzip)",
                   "content_encoding")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing connections whose request headers take longer than
    `header_seconds` and refusing connections beyond `max_connections`.

    uvicorn has no header timeout of its own: its keep-alive timer is armed only after an
    answer, so a client that connects and sends a byte now and then holds its connection for
    ever. The timer here runs from the connection, and from each new request's first byte,
    to the end of that request's headers (httptools' `on_message_begin` and
    `on_headers_complete` callbacks).
    """

    def __init__(self, *args: Any, header_seconds: float, max_connections: int,
                 on_refused: Callable[[str], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_seconds, self.max_connections = header_seconds, max_connections
        self.on_refused = on_refused
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.on_refused("connections")
            transport.close()
            return
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_seconds, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.on_refused("header_timeout")
            self.transport.close()


def protocol(header_seconds: float, max_connections: int, on_refused: Callable[[str], None],
             ) -> Callable[..., GuardedHttpToolsProtocol]:
    """The `http` protocol factory for `uvicorn.Config`."""
    return functools.partial(GuardedHttpToolsProtocol, header_seconds=header_seconds,
                             max_connections=max_connections, on_refused=on_refused)
