"""Host-wide local limits with real meshproxy processes (2 workers): one token bucket and one
connection count for the whole host, whichever worker the kernel hands a connection to.

The harness's readiness probe opens one connection through every listener: it takes a
token and is counted like any other connection, so the figures below include it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from integration.harness import (
    LOCALHOST,
    MeshProxy,
    Upstream,
    bootstrap,
    echo_handler,
    listener,
    static_cluster,
    tcp_proxy_filter,
    time_until_closed,
    wait_for,
)
from stats_shm import Segment

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]
LOCAL = "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
CONN = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"


def local_ratelimit(max_tokens: int, fill_interval: str = "3600s") -> dict:
    return {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
        "@type": LOCAL, "stat_prefix": "edge",
        "token_bucket": {"max_tokens": max_tokens, "fill_interval": fill_interval}}}


def connection_limit(max_connections: int, delay: str | None = None) -> dict:
    typed = {"@type": CONN, "stat_prefix": "edge", "max_connections": max_connections}
    if delay:
        typed["delay"] = delay
    return {"name": "envoy.filters.network.connection_limit", "typed_config": typed}


def stats(proxy: MeshProxy) -> dict[str, int]:
    segment = Segment.attach(proxy.base_id, read_only=True)
    try:
        snapshot = segment.snapshot()
        return {**snapshot.counters, **snapshot.gauges}
    finally:
        segment.close()


def echo_ok(sock: socket.socket) -> bool:
    """One byte through the proxy and back; False if the proxy closed the connection."""
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b"x"
    except OSError:
        return False


def open_all(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection((LOCALHOST, port), timeout=10) for _ in range(n)]


def in_threads(socks: list[socket.socket], fn: Callable[[socket.socket], bool]) -> list[bool]:
    results = [False] * len(socks)

    def run(i: int) -> None:
        results[i] = fn(socks[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(socks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_workers_share_one_bucket_exactly(start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(bootstrap([listener("main", 0, local_ratelimit(20), tcp_proxy_filter("backend"))],
                                  [static_cluster("backend", [upstream.port])]), concurrency=2)
    socks = open_all(proxy.port, 100)  # all at once: both workers take from the bucket
    try:
        passed = sum(in_threads(socks, echo_ok))
    finally:
        for s in socks:
            s.close()
    # 20 tokens for the host: the probe took one, so 19 of these 100 pass, not 2 x 20.
    assert passed == 19
    assert upstream.accepted == 20
    counted = stats(proxy)
    assert counted["local_rate_limit.edge.rate_limited"] == 81
    # Both workers took connections (the kernel spreads them), so both drew from the one bucket.
    per_worker = [counted[f"listener.127.0.0.1_0.worker_{i}.downstream_cx_total"] for i in (0, 1)]
    assert sum(per_worker) == 101 and min(per_worker) > 0, per_worker


def test_connection_limit_is_host_wide_and_survives_a_killed_worker(
        start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(bootstrap(
        [listener("main", 0, connection_limit(4), tcp_proxy_filter("backend")),
         listener("delayed", 0, connection_limit(1, delay="0.4s"), tcp_proxy_filter("backend"))],
        [static_cluster("backend", [upstream.port])]), concurrency=2)
    port = proxy.ports["main"]

    def probes_closed() -> bool:  # both readiness probes were seen by a worker and have closed
        counted = stats(proxy)
        return counted["listener.127.0.0.1_0.downstream_cx_destroy"] == 2 and \
            counted["connection_limit.edge.active_connections"] == 0

    wait_for(probes_closed, 5, "the probes to close")

    held = open_all(port, 8)
    admitted = in_threads(held, echo_ok)
    assert sum(admitted) == 4  # 4 for the host, not 4 per worker
    assert stats(proxy)["connection_limit.edge.limited_connections"] == 4
    for sock, ok in zip(held, admitted, strict=True):
        if not ok:
            sock.close()

    # Freeing one admitted connection makes room for exactly one more.
    keep = [s for s, ok in zip(held, admitted, strict=True) if ok]
    keep.pop().close()
    wait_for(lambda: stats(proxy)["connection_limit.edge.active_connections"] == 3, 5, "the close to count")
    more = open_all(port, 2)
    assert sorted(in_threads(more, echo_ok)) == [False, True]
    keep += more

    # A worker killed with connections open: its share is folded out once the limit is hit.
    victim = proxy.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in proxy.worker_pids() and len(proxy.worker_pids()) == 2, 10,
             "the worker to be replaced")
    alive = in_threads(keep, echo_ok)
    lost = alive.count(False)  # the killed worker's connections died with it
    for s in keep:
        s.close()
    time.sleep(1.1)  # dead holders are looked for at most once a second
    fresh = open_all(port, 6)
    try:
        assert sum(in_threads(fresh, echo_ok)) == 4, f"{lost} connections died with the worker"
    finally:
        for s in fresh:
            s.close()

    # delay: a connection over the limit is held for the delay, then closed.
    first = socket.create_connection((LOCALHOST, proxy.ports["delayed"]), timeout=10)
    assert echo_ok(first)
    second = socket.create_connection((LOCALHOST, proxy.ports["delayed"]), timeout=10)
    second.sendall(b"x")  # held, never passed on
    assert 0.3 < time_until_closed(second, 5.0) < 2.0
    first.close()
    second.close()
