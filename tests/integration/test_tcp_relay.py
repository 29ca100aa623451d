"""tcp_proxy's relay mode (workers/relay.py) in real workers: when it applies and what it counts."""

from __future__ import annotations

import os
import socket
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from integration.harness import (
    LOCALHOST,
    MeshProxy,
    Upstream,
    admin_stats,
    bootstrap,
    echo_handler,
    free_port,
    listener,
    recv_exactly,
    socket_address,
    static_cluster,
    tcp_proxy_filter,
    wait_for,
)

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]

# A filter that rewrites every downstream chunk: if the connection relayed in the event
# loop although this filter inspects data, later chunks would reach upstream unchanged.
UPPERCASE_FILTER = textwrap.dedent('''
    from filters.api import FilterStatus, NetworkFilter
    from filters.config_schema import Message
    from filters.registry import FilterType, register

    class Uppercase(NetworkFilter):
        def on_data(self, data, end_stream):
            self.callbacks.inject_read_data(data.upper(), end_stream, after=self)
            return FilterStatus.STOP_ITERATION

    SCHEMA = Message("test.Uppercase", fields={}, build=lambda fields, ctx, path: "uppercase")
    register(FilterType(name="test.uppercase", message="test.Uppercase", parse=SCHEMA.parse,
                        build=lambda config, worker: Uppercase))
''')



def test_a_filter_that_reads_data_keeps_seeing_every_chunk(
        start_proxy: StartProxy, start_upstream: StartUpstream, tmp_path: Path) -> None:
    (tmp_path / "uppercase_filter.py").write_text(UPPERCASE_FILTER)
    upstream = start_upstream(echo_handler)
    uppercase = {"name": "test.uppercase", "typed_config": {"@type": "type.googleapis.com/test.Uppercase"}}
    config = bootstrap([listener("main", 0, uppercase, tcp_proxy_filter("backend"))],
                       [static_cluster("backend", [upstream.port])])
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proxy = start_proxy(config, extra_args=["--filter-module", "uppercase_filter"], env=env)
    with socket.create_connection((LOCALHOST, proxy.port), timeout=5) as sock:
        for i in range(20):  # well after the upstream connected
            chunk = f"chunk {i} of twenty;".encode()
            sock.sendall(chunk)
            assert recv_exactly(sock, len(chunk)) == chunk.upper()
            time.sleep(0.01)


def test_relayed_bytes_are_counted_while_the_connection_stays_open(
        start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    upstream = start_upstream(echo_handler)
    admin = free_port()
    config = {**bootstrap([listener("main", 0, tcp_proxy_filter("backend"))],
                          [static_cluster("backend", [upstream.port])]),
              "admin": {"address": socket_address(admin)}}
    proxy = start_proxy(config)
    before = admin_stats(admin)
    payload = os.urandom(300_000)
    with socket.create_connection((LOCALHOST, proxy.port), timeout=5) as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        names = ("tcp.tcp.downstream_cx_rx_bytes_total", "tcp.tcp.downstream_cx_tx_bytes_total",
                 "cluster.backend.upstream_cx_tx_bytes_total", "cluster.backend.upstream_cx_rx_bytes_total")

        def counted() -> dict[str, int] | None:
            now = admin_stats(admin)
            deltas = {n: now.get(n, 0) - before.get(n, 0) for n in names}
            return deltas if all(d == len(payload) for d in deltas.values()) else None

        wait_for(counted, 5.0, "every byte counted, connection still open")
        sock.sendall(b"still open")
        assert recv_exactly(sock, 10) == b"still open"
