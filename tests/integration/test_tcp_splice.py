"""Splice mode (workers/splice.py) in real workers: bulk directions switch to splice(2) and
keep every byte, the counters, half-close and flow control."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import Callable

from integration.harness import (
    MeshProxy,
    Upstream,
    admin_stats,
    bootstrap,
    connect,
    echo_handler,
    free_port,
    listener,
    socket_address,
    static_cluster,
    tcp_proxy_filter,
    wait_for,
)

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]

CHUNK = random.Random(7).randbytes(256 * 1024)
BULK_S = 2.5  # past two samples of the relay (one a second): both directions get spliced



def proxy_with_admin(start_proxy: StartProxy, upstream: Upstream) -> tuple[MeshProxy, int]:
    admin = free_port()
    config = {**bootstrap([listener("main", 0, tcp_proxy_filter("backend"))],
                          [static_cluster("backend", [upstream.port])]),
              "admin": {"address": socket_address(admin)}}
    return start_proxy(config, concurrency=1), admin


def test_bulk_echo_is_spliced_both_ways_and_keeps_every_byte(
        start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    proxy, admin = proxy_with_admin(start_proxy, start_upstream(echo_handler))
    before = admin_stats(admin)
    sent, received = hashlib.sha256(), hashlib.sha256()
    counts = {"sent": 0, "received": 0}

    with connect(proxy.port) as sock:
        def read_all() -> None:
            while chunk := sock.recv(1 << 20):
                received.update(chunk)
                counts["received"] += len(chunk)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        deadline = time.monotonic() + BULK_S
        while time.monotonic() < deadline:
            sock.sendall(CHUNK)
            sent.update(CHUNK)
            counts["sent"] += len(CHUNK)
        sock.shutdown(socket.SHUT_WR)  # the half-close reaches upstream after every byte
        reader.join(30)
        assert not reader.is_alive(), "the echo's EOF never came back"

    assert counts["received"] == counts["sent"] > 16 * 1024 * 1024
    assert received.hexdigest() == sent.hexdigest()
    log = proxy.log()
    assert "relay: splicing downstream->upstream" in log
    assert "relay: splicing upstream->downstream" in log
    names = ("tcp.tcp.downstream_cx_rx_bytes_total", "tcp.tcp.downstream_cx_tx_bytes_total",
             "cluster.backend.upstream_cx_tx_bytes_total", "cluster.backend.upstream_cx_rx_bytes_total")

    def counted() -> dict[str, int] | None:
        now = admin_stats(admin)
        deltas = {n: now.get(n, 0) - before.get(n, 0) for n in names}
        return deltas if all(d == counts["sent"] for d in deltas.values()) else None

    wait_for(counted, 5.0, "every spliced byte counted exactly once")


class Pusher:
    """Pushes the same 256 KiB chunk until told to stop, then half-closes."""

    def __init__(self) -> None:
        self.sent = 0
        self.stop = threading.Event()

    def __call__(self, conn: socket.socket) -> None:
        if not conn.recv(1):  # the client says "go"; the harness's readiness probe says nothing
            return
        while not self.stop.is_set():
            conn.sendall(CHUNK)
            self.sent += len(CHUNK)
        conn.shutdown(socket.SHUT_WR)


def test_a_stalled_reader_stops_the_spliced_upstream(
        start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    pusher = Pusher()
    proxy, _admin = proxy_with_admin(start_proxy, start_upstream(pusher))
    received = hashlib.sha256()
    with connect(proxy.port) as sock:
        sock.sendall(b"g")
        got = 0
        deadline = time.monotonic() + BULK_S
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            received.update(chunk)
            got += len(chunk)
        wait_for(lambda: "relay: splicing upstream->downstream" in proxy.log(), 5.0, "the splice")

        # The client stops reading: the pusher must stall with a bounded amount in flight.
        last, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 1.0:
            if pusher.sent != last:
                last, still_since = pusher.sent, time.monotonic()
            time.sleep(0.05)
        in_flight = pusher.sent - got
        # Socket buffers on three hops (autotuned up to a few MiB each) and one 1 MiB pipe.
        assert in_flight < 48 * 1024 * 1024, f"{in_flight} bytes in flight: the proxy kept reading"

        pusher.stop.set()
        while chunk := sock.recv(1 << 20):
            received.update(chunk)
            got += len(chunk)
    assert got == pusher.sent
    expected = hashlib.sha256(CHUNK * (got // len(CHUNK)))
    assert got % len(CHUNK) == 0 and received.hexdigest() == expected.hexdigest()
