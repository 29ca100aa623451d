"""tcp_proxy end to end: real meshproxy workers between real sockets on 127.0.0.1.

Covers the data path of the foundation issue: bytes intact at every size, many
concurrent connections, half-close both ways, connect failures and timeouts with
retries, weighted clusters, idle timeout, flow control (memory stays bounded when a
peer stops reading) and the echo terminal filter.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from integration.harness import (
    IO_TIMEOUT_S,
    LOCALHOST,
    Blackhole,
    MeshProxy,
    MiB,
    Upstream,
    bootstrap,
    connect,
    echo_filter,
    echo_handler,
    free_port,
    listener,
    name_handler,
    proxy_config,
    recv_until_eof,
    roundtrip,
    static_cluster,
    stream_through,
    tcp_proxy_filter,
    time_until_closed,
    wait_for,
)

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]


@pytest.fixture(scope="module")
def echo_proxy(tmp_path_factory: pytest.TempPathFactory,
               request: pytest.FixtureRequest) -> Iterator[MeshProxy]:
    """One meshproxy in front of one echo upstream, shared by the byte-level tests."""
    upstream = Upstream(echo_handler)
    proxy = MeshProxy(tmp_path_factory.mktemp("echo_proxy"), proxy_config(upstream.port))
    failures = request.session.testsfailed
    try:
        yield proxy.start()
    finally:
        proxy.kill()
        upstream.close()
        if request.session.testsfailed > failures:
            print(proxy.log_tail(60))


# ----- bytes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1000, 65537, MiB + 7, 64 * MiB],
                         ids=["1B", "1000B", "65537B", "1MiB+7", "64MiB"])
def test_bytes_intact_through_echo_upstream(echo_proxy: MeshProxy, size: int) -> None:
    payload = random.Random(size).randbytes(size)
    received, digest = stream_through(echo_proxy.port, payload)
    assert received == size
    assert digest == hashlib.sha256(payload).hexdigest()


def test_200_concurrent_connections(echo_proxy: MeshProxy) -> None:
    count = 200

    async def run() -> list[bool]:
        rng = random.Random(200)
        all_open = asyncio.Event()
        opened = 0

        async def one() -> bool:
            nonlocal opened
            reader, writer = await asyncio.open_connection(LOCALHOST, echo_proxy.port)
            opened += 1
            if opened == count:
                all_open.set()
            await all_open.wait()  # every connection is open before any byte flows
            data = rng.randbytes(rng.randrange(1, 64 * 1024))
            writer.write(data)
            writer.write_eof()
            echoed = await reader.read(-1)  # until EOF: the upstream half-closes after ours
            writer.close()
            await writer.wait_closed()
            return echoed == data

        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 60)

    results = asyncio.run(run())
    assert results.count(True) == count


# ----- half-close -------------------------------------------------------------------------------


def test_client_half_close_reaches_upstream_which_still_replies(start_proxy: StartProxy,
                                                               start_upstream: StartUpstream) -> None:
    payload = random.Random(1).randbytes(4 * MiB)
    seen: dict[str, bytes] = {}

    def handler(conn: socket.socket) -> None:
        data = recv_until_eof(conn)  # returns only once our FIN came through the proxy
        if data:  # not the harness's readiness probe
            seen["data"] = data
            conn.sendall(b"after your EOF: " + hashlib.sha256(data).hexdigest().encode())

    proxy = start_proxy(proxy_config(start_upstream(handler).port))
    with connect(proxy.port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = recv_until_eof(sock)
    assert reply == b"after your EOF: " + hashlib.sha256(payload).hexdigest().encode()
    assert seen["data"] == payload


@pytest.mark.parametrize("first", ["upstream", "client"], ids=["upstream_ends_first", "client_ends_first"])
def test_both_directions_end_with_bytes_still_buffered(start_proxy: StartProxy, start_upstream: StartUpstream,
                                                       first: str) -> None:
    """Whichever side half-closes first, the other still sends, and nothing in flight is lost.

    The upstream reads nothing until both FINs have reached the proxy, so with a 32 MiB
    cluster buffer limit the proxy itself still holds much of the 16 MiB payload (what the
    kernel buffers did not take) when the second FIN arrives: those bytes must still be
    delivered, then the connection closes.
    """
    payload = random.Random(3).randbytes(16 * MiB)
    client_done = threading.Event()
    received = threading.Event()
    seen: dict[str, bytes] = {}

    def handler(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        if first == "upstream":
            conn.sendall(b"bye")
            conn.shutdown(socket.SHUT_WR)
        elif not conn.recv(1, socket.MSG_PEEK):  # the harness's readiness probe
            return
        if not client_done.wait(IO_TIMEOUT_S):
            return
        time.sleep(0.3)  # let the proxy read the client's last bytes and its FIN
        if first == "client":
            conn.sendall(b"bye")
            conn.shutdown(socket.SHUT_WR)
        data = recv_until_eof(conn)
        if data:
            seen["data"] = data
            received.set()

    proxy = start_proxy(proxy_config(start_upstream(handler).port,
                                     cluster_fields={"per_connection_buffer_limit_bytes": 32 * MiB}))
    with connect(proxy.port) as sock:
        if first == "upstream":
            assert recv_until_eof(sock) == b"bye"  # the upstream's FIN came through; we still send
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        client_done.set()
        if first == "client":
            assert recv_until_eof(sock) == b"bye"  # our FIN came through; the upstream still sends
        assert received.wait(IO_TIMEOUT_S), "the upstream never saw the client's EOF"
        assert time_until_closed(sock, 5.0) < 5.0
    assert len(seen["data"]) == len(payload)
    assert seen["data"] == payload


# ----- connecting -------------------------------------------------------------------------------


def test_refused_upstream_closes_downstream_promptly(start_proxy: StartProxy) -> None:
    proxy = start_proxy(proxy_config(free_port(), cluster_fields={"connect_timeout": "1s"}))
    for _ in range(5):
        with connect(proxy.port) as sock:
            elapsed = time_until_closed(sock, 5.0)
        assert elapsed < 0.5, f"downstream closed {elapsed:.2f}s after a refused upstream connect"


def test_upstream_connect_timeout_closes_downstream(start_proxy: StartProxy) -> None:
    with Blackhole() as blackhole:
        proxy = start_proxy(proxy_config(blackhole.port, cluster_fields={"connect_timeout": "0.5s"}))
        with connect(proxy.port) as sock:
            elapsed = time_until_closed(sock, 5.0)
    assert 0.45 <= elapsed <= 2.0, f"closed after {elapsed:.2f}s with connect_timeout 0.5s"


def test_max_connect_attempts_tries_the_next_hosts(start_proxy: StartProxy,
                                                   start_upstream: StartUpstream) -> None:
    """Hosts: [never answers, refuses, echoes]. Round robin with 3 attempts always gets through.

    Each worker's round robin starts at a random host, but once a connection has ended on
    the echo host (the last), the next one on that worker starts at the black hole, so
    with 5 connections over 2 workers at least one of them waits out a connect timeout.
    """
    echo = start_upstream(echo_handler)
    with Blackhole() as blackhole:
        config = bootstrap(
            [listener("main", 0, tcp_proxy_filter("backend", max_connect_attempts=3))],
            [static_cluster("backend", [blackhole.port, free_port(), echo.port],
                            connect_timeout="0.3s")],
        )
        proxy = start_proxy(config)
        # The readiness probe walks these hosts too; let it end (on the echo host) so that its
        # picks cannot interleave with ours and hand one connection the black hole twice.
        wait_for(lambda: echo.accepted >= 1 and echo.active == 0, 5.0, "the probe to reach the echo host")
        durations = []
        for i in range(5):
            start = time.monotonic()
            with connect(proxy.port) as sock:
                data = f"attempt {i}".encode()
                assert roundtrip(sock, data) == data
            durations.append(time.monotonic() - start)
    assert max(durations) >= 0.28, f"no connection waited out a connect timeout: {durations}"
    assert max(durations) < 3.0, durations


def test_weighted_clusters_spread_connections(start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    a = start_upstream(name_handler(b"a"))
    b = start_upstream(name_handler(b"b"))
    weighted = {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}
    config = bootstrap([listener("main", 0, tcp_proxy_filter(weighted_clusters=weighted))],
                       [static_cluster("a", [a.port]), static_cluster("b", [b.port])])
    proxy = start_proxy(config)
    answers: Counter[bytes] = Counter()
    for _ in range(40):
        with connect(proxy.port) as sock:
            sock.sendall(b"who?")
            answers[recv_until_eof(sock)] += 1
    assert set(answers) == {b"a", b"b"}, answers
    # Binomial(40, 1/2): fewer than 8 on either side has probability ~1e-5.
    assert min(answers.values()) >= 8, answers


# ----- timers -----------------------------------------------------------------------------------


def test_idle_timeout_closes_only_idle_connections(start_proxy: StartProxy,
                                                   start_upstream: StartUpstream) -> None:
    proxy = start_proxy(proxy_config(start_upstream(echo_handler).port, idle_timeout="1s"))
    with connect(proxy.port) as sock:
        # Traffic every 0.3s keeps it open past the timeout...
        for i in range(4):
            assert roundtrip(sock, b"ping %d" % i) == b"ping %d" % i
            time.sleep(0.3)
        assert roundtrip(sock, b"still open") == b"still open"
        # ...then silence closes it after about 1s.
        elapsed = time_until_closed(sock, 5.0)
    assert 0.9 <= elapsed <= 2.5, f"idle connection closed after {elapsed:.2f}s with idle_timeout 1s"


# ----- flow control -----------------------------------------------------------------------------


class Pusher:
    """An upstream handler that pushes ``total`` bytes as fast as the proxy takes them, then closes."""

    def __init__(self, total: int) -> None:
        self.payload = random.Random(total).randbytes(total)
        self.sent = 0
        self.done = threading.Event()

    def __call__(self, conn: socket.socket) -> None:
        if not conn.recv(1):  # the client says "go"; the harness's readiness probe says nothing
            return
        view, piece = memoryview(self.payload), 64 * 1024
        for i in range(0, len(view), piece):
            conn.sendall(view[i:i + piece])
            self.sent = i + piece
        conn.shutdown(socket.SHUT_WR)
        self.done.set()

    def wait_stalled(self, quiet_s: float = 1.0, timeout: float = 15.0) -> int:
        """Wait until the push makes no progress for ``quiet_s`` (or is done); returns the bytes sent."""
        last, last_change = -1, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.done.is_set():
                return self.sent
            if self.sent != last:
                last, last_change = self.sent, time.monotonic()
            elif self.sent and time.monotonic() - last_change >= quiet_s:
                return self.sent
            time.sleep(0.1)
        raise AssertionError(f"the upstream push never stalled: {self.sent} bytes sent")


def _non_reading_client(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(b"g")
    return sock


def _push_to_stalled_client(proxy: MeshProxy, pusher: Pusher) -> tuple[int, int, socket.socket]:
    """Connect without reading and let the upstream push until it stalls.

    Returns (workers' RSS growth in KiB, bytes pushed, the client socket).
    """
    before = proxy.workers_rss_kib()
    sock = _non_reading_client(proxy.port)
    pushed = pusher.wait_stalled()
    growth = proxy.workers_rss_kib() - before
    return growth, pushed, sock


def test_non_reading_client_keeps_proxy_memory_bounded(start_proxy: StartProxy,
                                                       start_upstream: StartUpstream) -> None:
    pusher = Pusher(64 * MiB)
    proxy = start_proxy(proxy_config(start_upstream(pusher).port,
                                     listener_fields={"per_connection_buffer_limit_bytes": MiB},
                                     cluster_fields={"per_connection_buffer_limit_bytes": MiB}))
    growth, pushed, sock = _push_to_stalled_client(proxy, pusher)
    print(f"non-reading client: upstream pushed {pushed / MiB:.1f} MiB before stalling; "
          f"workers' RSS grew by {growth / 1024:.1f} MiB (buffer limit 1 MiB)")
    with sock:
        assert pushed < 64 * MiB, "the whole 64 MiB went through to a client that reads nothing"
        assert growth < 16 * 1024, f"workers' RSS grew by {growth} KiB"
        # Reading again resumes the flow, and every byte arrives in order.
        data = recv_until_eof(sock)
    assert pusher.done.is_set()
    assert hashlib.sha256(data).digest() == hashlib.sha256(pusher.payload).digest()


def test_per_connection_buffer_limit_is_honoured(start_proxy: StartProxy,
                                                 start_upstream: StartUpstream) -> None:
    """A 24 MiB limit lets the proxy hold about that much for a stalled client, and no more."""
    limit = 24 * MiB
    pusher = Pusher(48 * MiB)
    proxy = start_proxy(proxy_config(start_upstream(pusher).port,
                                     listener_fields={"per_connection_buffer_limit_bytes": limit}))
    growth, pushed, sock = _push_to_stalled_client(proxy, pusher)
    print(f"buffer limit 24 MiB: upstream pushed {pushed / MiB:.1f} MiB before stalling; "
          f"workers' RSS grew by {growth / 1024:.1f} MiB")
    with sock:
        assert pushed >= limit, f"stalled after {pushed} bytes, below the {limit}-byte limit"
        assert 16 * 1024 <= growth < (limit + 16 * MiB) // 1024, f"workers' RSS grew by {growth} KiB"
        assert len(recv_until_eof(sock)) == len(pusher.payload)


def test_upstream_that_stops_reading_pauses_the_client(start_proxy: StartProxy,
                                                       start_upstream: StartUpstream) -> None:
    """The other direction: the cluster's buffer limit stops reading from downstream."""
    total = 64 * MiB
    release = threading.Event()
    digest: dict[str, bytes] = {}

    def slow_sink(conn: socket.socket) -> None:
        first = conn.recv(1)
        if not first:  # the harness's readiness probe
            return
        release.wait(IO_TIMEOUT_S)
        digest["sha"] = hashlib.sha256(first + recv_until_eof(conn)).digest()
        conn.sendall(b"done")

    proxy = start_proxy(proxy_config(start_upstream(slow_sink).port,
                                     cluster_fields={"per_connection_buffer_limit_bytes": MiB}))
    payload = random.Random(4).randbytes(total)
    sent = 0
    before = proxy.workers_rss_kib()
    with connect(proxy.port) as sock:
        sock.setblocking(False)
        view = memoryview(payload)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            try:
                sent += sock.send(view[sent:sent + 65536])
                quiet_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.05)
            assert sent < total, "all 64 MiB were taken while the upstream read nothing"
        growth = proxy.workers_rss_kib() - before
        print(f"non-reading upstream: client got {sent / MiB:.1f} MiB in before stalling; "
              f"workers' RSS grew by {growth / 1024:.1f} MiB (cluster buffer limit 1 MiB)")
        assert growth < 16 * 1024, f"workers' RSS grew by {growth} KiB"
        release.set()
        sock.settimeout(IO_TIMEOUT_S)
        sock.sendall(view[sent:])
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"done"
    assert digest["sha"] == hashlib.sha256(payload).digest()


# ----- other terminal filters -------------------------------------------------------------------


def test_echo_filter_is_a_terminal_filter(start_proxy: StartProxy) -> None:
    proxy = start_proxy(bootstrap([listener("echo", 0, echo_filter())]))
    payload = random.Random(5).randbytes(3 * MiB)
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
    received, digest = stream_through(proxy.port, payload)
    assert (received, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    # The echo filter ends the stream after ours: the client sees EOF with nothing pending.
    with connect(proxy.port) as sock:
        sock.sendall(b"bye")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"bye"
