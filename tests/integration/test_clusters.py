"""Clusters end to end: STRICT_DNS resolved by the main process, spreading over hosts."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable

from integration.harness import (
    LOCALHOST,
    MeshProxy,
    Upstream,
    bootstrap,
    echo_handler,
    listener,
    name_handler,
    static_cluster,
    tcp_proxy_filter,
)
from stats_shm import Segment


def test_strict_dns_cluster_resolves_hostnames_and_serves(
        start_proxy: Callable[..., MeshProxy], start_upstream: Callable[..., Upstream]) -> None:
    upstream = start_upstream(echo_handler)
    cluster = static_cluster("backend", [upstream.port], type="STRICT_DNS", dns_lookup_family="V4_ONLY",
                             dns_refresh_rate="0.5s")
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]["address"] = "localhost"
    proxy = start_proxy(bootstrap([listener("main", 0, tcp_proxy_filter("backend"))], [cluster]))
    with socket.create_connection((LOCALHOST, proxy.port), timeout=5) as sock:
        sock.sendall(b"dns")
        assert sock.recv(3) == b"dns"
    segment = Segment.attach(proxy.base_id, read_only=True)
    try:
        snapshot = segment.snapshot()
    finally:
        segment.close()
    assert snapshot.gauges["cluster.backend.membership_total"] == 1
    assert snapshot.counters["cluster.backend.update_success"] >= 1


def test_round_robin_spreads_connections_over_hosts(
        start_proxy: Callable[..., MeshProxy], start_upstream: Callable[..., Upstream]) -> None:
    a = start_upstream(name_handler(b"A"))
    b = start_upstream(name_handler(b"B"))
    proxy = start_proxy(bootstrap([listener("main", 0, tcp_proxy_filter("backend"))],
                                  [static_cluster("backend", [a.port, b.port])]))
    seen: Counter[bytes] = Counter()
    for _ in range(40):
        with socket.create_connection((LOCALHOST, proxy.port), timeout=5) as sock:
            sock.sendall(b"?")
            seen[sock.recv(1)] += 1
    # Each worker rotates over both hosts, so neither host can get much more than half.
    assert seen[b"A"] + seen[b"B"] == 40
    assert min(seen[b"A"], seen[b"B"]) >= 14, seen
