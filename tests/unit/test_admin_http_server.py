"""The admin HTTP server's protocol rules on loopback: keep-alive, pipelining, limits, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import httptools

from meshproxy.admin.http import HttpServer, Limits, Request, Response

SMALL = Limits(max_url_bytes=256, max_head_bytes=2048, max_headers=10, max_body_bytes=64, max_pipelined=4,
               max_connections=3, request_timeout=0.3, idle_timeout=0.5)


class Responses:
    """Parses a stream of responses with httptools."""

    def __init__(self) -> None:
        self.done: list[tuple[int, bytes, dict[bytes, bytes]]] = []
        self._body = b""
        self._headers: dict[bytes, bytes] = {}
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._body, self._headers))
        self._body, self._headers = b"", {}


async def read_responses(reader: asyncio.StreamReader, count: int, timeout: float = 2.0,
                         head: bool = False) -> list[tuple[int, bytes, dict[bytes, bytes]]]:
    responses = Responses()
    if head:
        responses.parser.set_dangerous_leniencies(lenient_data_after_close=True)
    while len(responses.done) < count:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        if not data:
            break
        responses.parser.feed_data(data)
    return responses.done


async def closed(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    """Everything until EOF (fails if the server keeps the connection open)."""
    return await asyncio.wait_for(reader.read(), timeout)


Server = tuple[HttpServer, int, list[Request]]


def _handler(seen: list[Request]) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("boom")
        if request.path == "/big":
            return Response(200, b"x" * (8 << 20))
        return Response(200, f"{request.method} {request.path} {sorted(request.query.items())}\n".encode())

    return handler


def serve(fn: Callable[[Server], Awaitable[None]]) -> Callable[[], None]:
    """Turn ``async def test_x(server)`` into a plain test running on a fresh loop with a server."""

    def test() -> None:
        async def main() -> None:
            seen: list[Request] = []
            http = HttpServer(_handler(seen), SMALL)
            _, port = await http.start("127.0.0.1", 0)
            try:
                await fn((http, port, seen))
            finally:
                await http.stop()

        asyncio.run(main())

    test.__name__ = fn.__name__
    test.__doc__ = fn.__doc__
    return test


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


@serve
async def test_keep_alive_and_pipelining(server: Server) -> None:
    _, port, seen = server
    reader, writer = await connect(port)
    writer.write(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await read_responses(reader, 1))[0][:2] == (200, b"GET /a [('x', '1')]\n")
    writer.write(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    done = await read_responses(reader, 2)
    assert [(s, b) for s, b, _ in done] == [(200, b"GET /b []\n"), (200, b"POST /c []\n")]
    assert seen[-1].body == b"abc"
    writer.close()


@serve
async def test_connection_close_and_http10(server: Server) -> None:
    _, port, _ = server
    for request in (b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET /a HTTP/1.0\r\n\r\n"):
        reader, writer = await connect(port)
        writer.write(request)
        data = await closed(reader)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close\r\n" in data
        writer.close()


@serve
async def test_head_has_no_body(server: Server) -> None:
    _, port, _ = server
    reader, writer = await connect(port)
    writer.write(b"HEAD /a HTTP/1.1\r\nConnection: close\r\n\r\n")
    data = await closed(reader)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 11" in head and body == b""
    writer.close()


LIMIT_CASES = [
    (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(11)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nbig: " + b"v" * 3000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n" + b"b" * 65, 413),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
]


@serve
async def test_limits_answer_and_close(server: Server) -> None:
    _, port, seen = server
    for request_bytes, status in LIMIT_CASES:
        reader, writer = await connect(port)
        writer.write(request_bytes)
        data = await closed(reader)
        assert data.startswith(b"HTTP/1.1 %d " % status), data[:80]
        writer.close()
    assert seen == []


@serve
async def test_header_dribbled_in_pieces_is_bounded(server: Server) -> None:
    _, port, _ = server
    reader, writer = await connect(port)
    writer.write(b"GET / HTTP/1.1\r\nbig: ")
    for _ in range(6):
        writer.write(b"v" * 500)
        await asyncio.sleep(0.01)
    data = await closed(reader)
    assert data.startswith(b"HTTP/1.1 431 ")
    writer.close()


@serve
async def test_request_timeout_closes_a_slow_request(server: Server) -> None:
    _, port, seen = server
    reader, writer = await connect(port)
    writer.write(b"GET / HTTP/1.1\r\nHost: ")
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await closed(reader) == b""
    assert 0.2 < loop.time() - start < 1.5
    assert seen == []
    writer.close()


@serve
async def test_idle_timeout_closes_an_idle_connection(server: Server) -> None:
    _, port, _ = server
    reader, writer = await connect(port)
    writer.write(b"GET /a HTTP/1.1\r\n\r\n")
    assert len(await read_responses(reader, 1)) == 1
    assert await closed(reader) == b""  # closed after idle_timeout (0.5s)
    writer.close()


@serve
async def test_bytes_that_form_no_request_do_not_keep_a_connection_alive(server: Server) -> None:
    _, port, _ = server
    reader, writer = await connect(port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not reader.at_eof() and loop.time() - start < 2.0:
        writer.write(b"\r\n")  # empty lines before a request line are allowed, forever
        await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.01)
    assert reader.at_eof() and loop.time() - start < 1.5  # idle_timeout is 0.5s
    writer.close()


@serve
async def test_connection_limit(server: Server) -> None:
    http, port, _ = server
    conns = [await connect(port) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert http.connections == 3
    reader, writer = await connect(port)
    assert await closed(reader) == b""
    for _, w in conns:
        w.close()
    writer.close()


@serve
async def test_a_peer_that_does_not_read_stops_being_served(server: Server) -> None:
    http, port, seen = server
    _reader, writer = await connect(port)
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    writer.write(b"GET /big HTTP/1.1\r\n\r\n" * 4)
    await asyncio.sleep(0.3)
    # Write flow control stopped answering: 8 MiB responses, more than the kernel buffers hold.
    assert len(seen) < 4
    await asyncio.sleep(0.6)
    assert http.connections == 0  # and the stalled connection was closed after idle_timeout
    writer.close()


@serve
async def test_too_many_pipelined_requests(server: Server) -> None:
    _, port, seen = server
    reader, writer = await connect(port)
    writer.write(b"GET /a HTTP/1.1\r\n\r\n" * 40)
    data = await closed(reader)
    # The 5th queued request exceeds max_pipelined=4: the first 4 are answered, then 503 and close.
    assert data.count(b"HTTP/1.1 200 OK") == 4 and b"HTTP/1.1 503 " in data
    assert len(seen) == 4
    writer.close()


@serve
async def test_handler_error_is_a_500_and_the_connection_survives(server: Server) -> None:
    _, port, _ = server
    reader, writer = await connect(port)
    writer.write(b"GET /boom HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n")
    done = await read_responses(reader, 2)
    assert [s for s, _, _ in done] == [500, 200]
    assert done[0][1] == b"internal error: boom\n"
    writer.close()


def test_after_runs_once_the_response_is_written() -> None:
    asyncio.run(_after_runs())


async def _after_runs() -> None:
    events: list[str] = []
    http = HttpServer(lambda r: Response(200, b"OK\n", after=lambda: events.append("after"), close=True))
    _, port = await http.start()
    reader, writer = await connect(port)
    writer.write(b"POST /quitquitquit HTTP/1.1\r\n\r\n")
    data = await closed(reader)
    assert data.endswith(b"\r\n\r\nOK\n") and events == ["after"]
    writer.close()
    await http.stop()


@serve
async def test_stop_closes_connections(server: Server) -> None:
    http, port, _ = server
    reader, writer = await connect(port)
    writer.write(b"GET /a HTTP/1.1\r\n\r\n")
    await read_responses(reader, 1)
    await http.stop()
    assert await closed(reader) == b""
    writer.close()
