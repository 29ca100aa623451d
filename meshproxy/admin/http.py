"""A small HTTP/1.1 server for the admin endpoint: ``asyncio.Protocol`` + httptools.

It runs inside the main process, so its first duty is that no client, slow or hostile,
can hurt that process. The rules, each with its reason:

* **Bounded input.** URL ≤ ``max_url_bytes`` (414), request head ≤ ``max_head_bytes``
  and ≤ ``max_headers`` headers (431), body ≤ ``max_body_bytes`` (413; admin requests
  carry no meaningful body). Complete header lines are counted exactly; httptools also
  buffers a partial line itself, so while a head is incomplete after a read, that whole
  read counts against a second head budget: it can only overcount (a pipelined burst
  ending mid-head), never let a partial line grow unbounded.
* **Bounded time.** A request must be complete ``request_timeout`` seconds after it
  began (slowloris); an idle keep-alive connection, or one whose peer stops reading our
  response, is closed after ``idle_timeout``. One ``call_later`` timer per connection,
  re-armed on state changes, never per byte.
* **Flow control.** Complete requests are queued and answered in order (pipelining).
  When the transport's write buffer passes its high-water mark (``pause_writing``) we
  stop answering and stop reading; ``resume_writing`` continues. At most
  ``max_pipelined`` requests wait; beyond that the connection is closed. So a peer that
  never reads costs at most one response plus the transport's buffer.
* **Bounded connections.** Beyond ``max_connections`` a new connection is closed at once.
* A handler that raises produces a 500 and a log line, never an exception into the loop.

Handlers are synchronous (``Request -> Response``); the admin endpoints only read
in-memory state. ``Response.after`` runs on the loop once the response is written
(``/quitquitquit`` answers before the process starts to exit).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

import httptools

log = logging.getLogger("meshproxy.admin")

TEXT: str = "text/plain; charset=UTF-8"


@dataclass(frozen=True, slots=True)
class Limits:
    max_url_bytes: int = 8192
    max_head_bytes: int = 65536
    max_headers: int = 100
    max_body_bytes: int = 65536
    max_pipelined: int = 32
    max_connections: int = 128
    request_timeout: float = 10.0
    idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request; ``query`` holds the first value of each parameter, percent-decoded
    (``+`` stays ``+``, as in Envoy, so regexes survive)."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()
    after: Callable[[], None] | None = None
    close: bool = False


Handler = Callable[[Request], Response]


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """Split a request target into its path and decoded query (first value wins)."""
    path, _, raw = target.partition("?")
    query: dict[str, str] = {}
    for part in raw.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        query.setdefault(unquote(key), unquote(value))
    return path, query


def encode_response(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"content-type: {response.content_type}",
        f"content-length: {len(response.body)}",
        "cache-control: no-cache, max-age=0",
        "x-content-type-options: nosniff",
        f"date: {email.utils.formatdate(usegmt=True)}",
        "server: meshproxy",
    ]
    lines.extend(f"{k}: {v}" for k, v in response.headers)
    if not keep_alive:
        lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = Response(status, (message + "\n").encode(), close=True)


@dataclass(slots=True)
class _Pending:
    request: Request | None
    response: Response | None  # a protocol error to send instead
    keep_alive: bool = True


class HttpProtocol(asyncio.Protocol):
    """One admin connection (see the module docstring)."""

    def __init__(self, handler: Handler, limits: Limits, connections: set[HttpProtocol]) -> None:
        self._handler = handler
        self._limits = limits
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._write_paused = False
        self._closing = False
        # Per-request state.
        self._in_request = False  # between message begin and complete
        self._in_head = False
        self._head_bytes = 0  # exact: URL and complete header lines
        self._partial_bytes = 0  # whole reads that ended inside the head
        self._headers = 0
        self._url = bytearray()
        self._body = bytearray()

    # ----- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if len(self._connections) >= self._limits.max_connections:
            log.warning("admin: too many connections (%d); closing a new one", len(self._connections))
            transport.abort()
            return
        self._connections.add(self)
        self._arm(self._limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._closing = True
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
            if self._in_head:
                self._partial_bytes += len(data)
                if self._partial_bytes > self._limits.max_head_bytes:
                    raise _Reject(431, "request header fields too large")
        except _Reject as exc:
            self._fail(exc.response)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause.response if isinstance(cause, _Reject) else Response(400, b"bad request\n"))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._fail(Response(400, b"bad request\n", close=True))
        self._process()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()
        self._arm(self._limits.idle_timeout)  # a peer that does not read is closed

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
        self._arm_idle()
        self._process()

    def close(self) -> None:
        """Abort the connection (server shutdown)."""
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, response: Response) -> None:
        response.close = True
        self._queue.append(_Pending(None, response, keep_alive=False))
        self._closing = True  # no more parsing; queued answers still go out in order

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        log.debug("admin: closing a connection that timed out")
        if self._transport is not None:
            self._transport.abort()

    # ----- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_request = self._in_head = True
        self._head_bytes = self._partial_bytes = 0
        self._headers = 0
        self._url.clear()
        self._body.clear()
        self._arm(self._limits.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if len(self._url) > self._limits.max_url_bytes:
            raise _Reject(414, "uri too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._headers > self._limits.max_headers or self._head_bytes > self._limits.max_head_bytes:
            raise _Reject(431, "request header fields too large")

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > self._limits.max_body_bytes:
            raise _Reject(413, "payload too large")
        self._body += body

    def on_message_complete(self) -> None:
        self._in_request = False
        if len(self._queue) >= self._limits.max_pipelined:
            raise _Reject(503, "too many pipelined requests")
        method = self._parser.get_method().decode("latin-1")
        path, query = parse_target(self._url.decode("latin-1"))
        request = Request(method, path, query, bytes(self._body))
        self._queue.append(_Pending(request, None, self._parser.should_keep_alive()))

    # ----- answering --------------------------------------------------------------------------

    def _process(self) -> None:
        transport = self._transport
        answered = False
        while self._queue and not self._write_paused and transport is not None and not transport.is_closing():
            pending = self._queue.popleft()
            response = pending.response
            head_only = False
            if pending.request is not None:
                head_only = pending.request.method == "HEAD"
                response = self._call(pending.request)
            assert response is not None
            keep_alive = pending.keep_alive and not response.close
            transport.write(encode_response(response, keep_alive, head_only))
            answered = True
            if response.after is not None:
                self._loop.call_soon(_run_after, response.after)
            if not keep_alive:
                self._closing = True
                self._queue.clear()
                transport.close()
                return
        # Only an answer (or the peer reading one) restarts the idle clock: bytes that never
        # form a request do not.
        if answered:
            self._arm_idle()

    def _arm_idle(self) -> None:
        if not (self._queue or self._write_paused or self._in_request or self._closing):
            self._arm(self._limits.idle_timeout)

    def _call(self, request: Request) -> Response:
        try:
            return self._handler(request)
        except Exception as exc:  # a bug in a handler must not take the main process down
            log.exception("admin: %s %s failed", request.method, request.path)
            return Response(500, f"internal error: {exc}\n".encode())


def _run_after(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("admin: post-response action failed")


@dataclass(slots=True)
class HttpServer:
    """Listens and hands each request to ``handler``."""

    handler: Handler
    limits: Limits = field(default_factory=Limits)
    _server: asyncio.Server | None = None
    _connections: set[HttpProtocol] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on ``host:port`` (or an already bound ``sock``); returns the bound address."""
        loop = asyncio.get_running_loop()

        def factory() -> HttpProtocol:
            return HttpProtocol(self.handler, self.limits, self._connections)

        if sock is not None:
            server = await loop.create_server(factory, sock=sock)
        else:
            server = await loop.create_server(factory, host, port, reuse_address=True)
        self._server = server
        address = server.sockets[0].getsockname()
        return address[0], address[1]

    async def stop(self) -> None:
        """Stop listening and abort open connections."""
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def connections(self) -> int:
        return len(self._connections)
