"""Stats end to end: real workers count into shared memory; admin, statsd and the CLI read it.

Counters are compared as deltas around the traffic each test makes, because the
harness's readiness probe opens one connection through every listener.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.harness import (
    LOCALHOST,
    REPO_ROOT,
    MeshProxy,
    Upstream,
    echo_handler,
    free_port,
    proxy_config,
    roundtrip,
    socket_address,
    wait_for,
)

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]
LISTENER = "listener.127.0.0.1_0."  # the listener binds port 0; its stat root keeps the configured address


def with_admin(config: dict[str, Any], port: int, **extra: Any) -> dict[str, Any]:
    return {**config, "admin": {"address": socket_address(port)}, **extra}


def http(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://{LOCALHOST}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stats(port: int) -> dict[str, int]:
    status, body = http(port, "/stats?format=json")
    assert status == 200
    return {s["name"]: s["value"] for s in json.loads(body)["stats"] if "name" in s}


def counters_settled(port: int, name: str, expected: int, open_upstreams: int = 0) -> dict[str, int]:
    """Workers count as connections open and close: wait until ``name`` reaches ``expected``
    and every connection it counted has closed on both sides."""

    def settled() -> dict[str, int] | None:
        s = stats(port)
        closed = s.get("cluster.backend.upstream_cx_total", 0) - open_upstreams
        done = (s.get(name) == expected and s.get("cluster.backend.upstream_rq_active") == open_upstreams
                and s.get("cluster.backend.upstream_cx_destroy") == closed)
        return s if done else None

    return wait_for(settled, 10.0, f"{name} == {expected} and idle")


@pytest.fixture
def echo_upstream(start_upstream: StartUpstream) -> Upstream:
    return start_upstream(echo_handler)


def test_exact_counters_after_1000_connections_across_2_workers(
        start_proxy: StartProxy, echo_upstream: Upstream) -> None:
    admin = free_port()
    proxy = start_proxy(with_admin(proxy_config(echo_upstream.port), admin))
    before = counters_settled(admin, "tcp.tcp.downstream_cx_total", 1)  # the readiness probe
    payload = b"x" * 100
    for _ in range(1000):
        with socket.create_connection((LOCALHOST, proxy.port), timeout=5) as sock:
            assert roundtrip(sock, payload) == payload
    after = counters_settled(admin, "tcp.tcp.downstream_cx_total", 1001)

    def delta(name: str) -> int:
        return after[name] - before.get(name, 0)

    assert delta(LISTENER + "downstream_cx_total") == 1000
    workers = [delta(f"{LISTENER}worker_{i}.downstream_cx_total") for i in (0, 1)]
    assert sum(workers) == 1000 and min(workers) > 0, workers  # SO_REUSEPORT spread both ways
    assert delta("cluster.backend.upstream_cx_total") == 1000
    assert delta("cluster.backend.upstream_rq_total") == 1000
    assert delta("tcp.tcp.downstream_cx_rx_bytes_total") == 100 * 1000
    assert delta("tcp.tcp.downstream_cx_tx_bytes_total") == 100 * 1000
    assert delta("cluster.backend.upstream_cx_tx_bytes_total") == 100 * 1000
    wait_for(lambda: stats(admin)[LISTENER + "downstream_cx_active"] == 0, 10.0, "no active connections")
    assert after["server.concurrency"] == 2
    assert after["listener_manager.workers_started"] == 2

    status, text = http(admin, "/stats/prometheus")
    assert status == 200
    families = list(text_string_to_metric_families(text))
    samples: dict[str, list[Any]] = {}
    for family in families:
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    assert text.count("# TYPE envoy_listener_downstream_cx_total ") == 1
    assert [(s.labels, s.value) for s in samples["envoy_listener_downstream_cx_total"]] == [
        ({"envoy_listener_address": "127.0.0.1_0"}, after[LISTENER + "downstream_cx_total"])]
    assert [s.labels for s in samples["envoy_tcp_downstream_cx_total"]] == [{"envoy_tcp_prefix": "tcp"}]
    assert "envoy_cluster_upstream_cx_connect_ms_bucket" in samples  # a histogram family
    assert any(f.name == "envoy_cluster_upstream_cx_connect_ms" and f.type == "histogram" for f in families)


def test_killed_worker_keeps_its_counters_and_drops_its_gauges(
        start_proxy: StartProxy, echo_upstream: Upstream) -> None:
    admin = free_port()
    proxy = start_proxy(with_admin(proxy_config(echo_upstream.port), admin))
    counters_settled(admin, "tcp.tcp.downstream_cx_total", 1)
    held = []
    for _ in range(40):
        sock = socket.create_connection((LOCALHOST, proxy.port), timeout=5)
        assert roundtrip(sock, b"ping") == b"ping"
        held.append(sock)
    before = counters_settled(admin, "tcp.tcp.downstream_cx_total", 41, open_upstreams=40)
    active = before[LISTENER + "downstream_cx_active"]
    assert active == 40
    per_worker = [before[f"{LISTENER}worker_{i}.downstream_cx_active"] for i in (0, 1)]
    assert sum(per_worker) == 40 and min(per_worker) > 0, per_worker
    victim = proxy.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in proxy.worker_pids() and len(proxy.worker_pids()) == 2, 10.0,
             "worker replaced")
    after = wait_for(lambda: (s := stats(admin))[LISTENER + "downstream_cx_active"] < active and s, 10.0,
                     "gauges of the dead worker dropped")
    # The dead worker's gauges are gone; the survivor's remain.
    assert after[LISTENER + "downstream_cx_active"] in per_worker
    for name, value in before.items():
        if name.endswith(("_total", "_destroy", "_fail")) and not name.startswith("server."):
            assert after.get(name, 0) >= value, f"{name} went down: {value} -> {after.get(name)}"
    assert after["tcp.tcp.downstream_cx_total"] == before["tcp.tcp.downstream_cx_total"]
    assert after[LISTENER + "downstream_cx_total"] == before[LISTENER + "downstream_cx_total"]
    assert after["server.worker_restarts"] == before["server.worker_restarts"] + 1
    for sock in held:
        sock.close()


def test_statsd_sink_receives_counter_deltas(start_proxy: StartProxy, echo_upstream: Upstream) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((LOCALHOST, 0))
    receiver.settimeout(5)
    sink = {"name": "envoy.stat_sinks.statsd", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink",
        "address": socket_address(receiver.getsockname()[1]), "prefix": "mesh"}}
    config = {**proxy_config(echo_upstream.port), "stats_sinks": [sink], "stats_flush_interval": "0.3s"}
    proxy = start_proxy(config)
    for _ in range(5):
        with socket.create_connection((LOCALHOST, proxy.port), timeout=5) as sock:
            assert roundtrip(sock, b"hi") == b"hi"
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 10
    while seen.get("mesh.tcp.tcp.downstream_cx_total", 0) < 6 and time.monotonic() < deadline:
        datagram = receiver.recv(65536)
        assert len(datagram) <= 1400
        for line in datagram.decode().splitlines():
            name, _, rest = line.partition(":")
            value, kind = rest.split("|")[:2]
            if kind == "c":
                seen[name] = seen.get(name, 0) + int(value)  # deltas add up to the total
    receiver.close()
    assert seen["mesh.tcp.tcp.downstream_cx_total"] == 6  # 5 + the readiness probe


def test_admin_state_endpoints_and_stats_cli(start_proxy: StartProxy, echo_upstream: Upstream) -> None:
    admin = free_port()
    proxy = start_proxy(with_admin(proxy_config(echo_upstream.port), admin))
    assert http(admin, "/ready") == (200, "LIVE\n")
    assert http(admin, "/healthcheck/fail")[0] == 405  # a page in a browser cannot flip it
    assert http(admin, "/ready") == (200, "LIVE\n")
    assert http(admin, "/healthcheck/fail", "POST") == (200, "OK\n")
    assert http(admin, "/ready") == (503, "DRAINING\n")
    assert stats(admin)["server.live"] == 0
    assert http(admin, "/healthcheck/ok", "POST") == (200, "OK\n")
    assert http(admin, "/ready") == (200, "LIVE\n")
    status, listeners = http(admin, "/listeners")
    assert status == 200 and f"main::127.0.0.1:{proxy.port}" in listeners
    status, clusters = http(admin, "/clusters")
    assert f"backend::127.0.0.1:{echo_upstream.port}::cx_total::1" in clusters

    cli = subprocess.run([sys.executable, "-m", "meshproxy", "stats", "--base-id", str(proxy.base_id),
                          "--format", "json", "--filter", "^tcp\\."], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    names = {s["name"] for s in json.loads(cli.stdout)["stats"] if "name" in s}
    assert "tcp.tcp.downstream_cx_total" in names and all(n.startswith("tcp.") for n in names)

    assert http(admin, "/drain_listeners", "POST") == (200, "OK\n")

    def refused() -> bool:
        try:
            socket.create_connection((LOCALHOST, proxy.port), timeout=0.5).close()
        except OSError:
            return True
        return False

    # Stopped listeners no longer accept in the workers; the process stays up.
    wait_for(lambda: _not_served(proxy.port) or refused(), 10.0, "listener stopped")
    assert proxy.proc is not None and proxy.proc.poll() is None
    assert http(admin, "/quitquitquit", "POST") == (200, "OK\n")
    assert proxy.wait(15) == 0


def _not_served(port: int) -> bool:
    """A connection that the kernel queues but no worker accepts gets no echo."""
    try:
        sock = socket.create_connection((LOCALHOST, port), timeout=0.5)
    except OSError:
        return True
    result: list[bytes] = []
    with sock:
        sock.settimeout(0.5)

        def talk() -> None:
            try:
                sock.sendall(b"?")
                result.append(sock.recv(1))
            except OSError:
                result.append(b"")

        t = threading.Thread(target=talk)
        t.start()
        t.join(1.0)
    return result in ([], [b""])
