"""The admin endpoint in-process, over real HTTP: urllib, http.client keep-alive and curl.

The server runs on its own event loop in a thread (as in the main process, where it
shares the loop with supervision); its context serves snapshots of a real stats segment
written through two areas, as two workers would.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from unit.admin_fakes import FakeContext

from meshproxy.admin import AdminServer, Limits, ServerState
from stats_shm import Segment, Snapshot


class SegmentContext(FakeContext):
    def __init__(self, segment: Segment) -> None:
        super().__init__()
        self.segment = segment

    def snapshot(self) -> Snapshot:
        return self.segment.snapshot()


class Running:
    """An AdminServer on a private loop in a daemon thread."""

    def __init__(self, context: SegmentContext, limits: Limits | None = None) -> None:
        self.context = context
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.admin = AdminServer(context, limits=limits)
        host, port = self.call(self.admin.start("127.0.0.1", 0))
        self.base = f"http://{host}:{port}"
        self.port = port

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def flush(self) -> None:
        done = threading.Event()

        def flush() -> None:
            self.admin.record_flush(self.context.snapshot())
            done.set()

        self.loop.call_soon_threadsafe(flush)
        assert done.wait(5)

    def stop(self) -> None:
        self.call(self.admin.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Segment]:
    seg = Segment.create(11, slot_budget=256, histogram_budget=16, areas=4, directory=str(tmp_path))
    workers = [seg.store(seg.claim_area()) for _ in range(2)]
    for i, store in enumerate(workers):
        store.counter("cluster.svc.upstream_rq_200").inc(10 + i)
        store.counter("cluster.svc.upstream_rq_503").inc(1)
        store.counter(f"listener.127.0.0.1_10000.worker_{i}.downstream_cx_total").inc(5)
        store.counter("listener.127.0.0.1_10000.downstream_cx_total").inc(5)
        store.gauge("cluster.svc.upstream_cx_active").set(2)
        store.histogram("cluster.svc.upstream_rq_time").record(4 * (i + 1))
    workers[0].counter("tcp.demo.downstream_cx_total")  # created, never used
    workers[0].gauge("server.uptime").set(30)
    workers[0].counter("_host.svc.127.0.0.1:8080.rq_total").inc(3)
    yield seg
    seg.close()


@pytest.fixture
def admin(segment: Segment) -> Iterator[Running]:
    running = Running(SegmentContext(segment))
    yield running
    running.stop()


def get(admin: Running, target: str, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(admin.base + target, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("content-type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def curl(admin: Running, *args: str) -> tuple[int, str]:
    """``(status, body)`` of a curl run (the body exactly as received)."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_stats_text_merges_processes(admin: Running) -> None:
    status, ctype, body = get(admin, "/stats")
    assert status == 200 and ctype.startswith("text/plain")
    lines = body.splitlines()
    assert "cluster.svc.upstream_rq_200: 21" in lines
    assert "cluster.svc.upstream_cx_active: 4" in lines
    assert not any(line.startswith("_") for line in lines)
    assert any(line.startswith("cluster.svc.upstream_rq_time: P0(nan,") for line in lines)


def test_stats_filter_url_encoded_with_urllib_and_curl(admin: Running) -> None:
    regex = r"upstream_rq_\d+$"
    _, _, body = get(admin, "/stats?filter=" + urllib.parse.quote(regex, safe=""))
    assert body == "cluster.svc.upstream_rq_200: 21\ncluster.svc.upstream_rq_503: 2\n"
    code, body_curl = curl(admin, "-G", "--data-urlencode", f"filter={regex}", admin.base + "/stats")
    assert code == 200 and body_curl == body


def test_usedonly(admin: Running) -> None:
    _, _, every = get(admin, "/stats")
    _, _, used = get(admin, "/stats?usedonly")
    assert "tcp.demo.downstream_cx_total: 0" in every and "tcp.demo" not in used


def test_stats_json(admin: Running) -> None:
    status, ctype, body = get(admin, "/stats?format=json")
    assert status == 200 and ctype == "application/json"
    stats = json.loads(body)["stats"]
    assert {"name": "cluster.svc.upstream_rq_200", "value": 21} in stats
    histograms = stats[-1]["histograms"]
    assert histograms["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    [rq_time] = [q for q in histograms["computed_quantiles"] if q["name"] == "cluster.svc.upstream_rq_time"]
    assert rq_time["values"][-1] == {"interval": None, "cumulative": 8}


def test_prometheus(admin: Running) -> None:
    code, body = curl(admin, admin.base + "/stats/prometheus")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body)}
    rq = families["envoy_cluster_upstream_rq"]
    assert rq.type == "counter"
    assert {(s.labels["envoy_response_code"], s.value) for s in rq.samples} == {("200", 21), ("503", 2)}
    worker = families["envoy_listener_worker_downstream_cx"]
    assert {s.labels["envoy_worker_id"] for s in worker.samples} == {"0", "1"}
    assert families["envoy_cluster_upstream_rq_time"].type == "histogram"
    assert "envoy_server_uptime{} 30\n" in body
    assert body.count("# TYPE ") == len(families)
    _, _, via_stats = get(admin, "/stats?format=prometheus&usedonly")
    assert "tcp_downstream_cx_total" not in via_stats


def test_flush_interval_then_values(admin: Running, segment: Segment) -> None:
    admin.flush()
    _, _, body = get(admin, "/stats?filter=upstream_rq_time")
    assert body.strip().endswith("P100(8,8)")


def test_reset_counters_is_display_only(admin: Running, segment: Segment) -> None:
    code, body = curl(admin, "-X", "POST", admin.base + "/reset_counters")
    assert (code, body) == (200, "OK\n")
    _, _, after = get(admin, "/stats?filter=upstream_rq_200")
    assert after == "cluster.svc.upstream_rq_200: 0\n"
    assert segment.snapshot().counters["cluster.svc.upstream_rq_200"] == 21


def test_server_info_ready_healthcheck(admin: Running) -> None:
    status, ctype, body = get(admin, "/server_info")
    assert status == 200 and ctype == "application/json" and json.loads(body)["state"] == "LIVE"
    assert get(admin, "/ready")[::2] == (200, "LIVE\n")
    assert curl(admin, "-X", "POST", admin.base + "/healthcheck/fail") == (200, "OK\n")
    assert get(admin, "/ready")[::2] == (503, "DRAINING\n")
    assert admin.context.state is ServerState.DRAINING
    assert get(admin, "/healthcheck/ok", "POST")[::2] == (200, "OK\n")
    assert get(admin, "/ready")[0] == 200


@pytest.mark.parametrize("path", ["/healthcheck/fail", "/healthcheck/ok", "/reset_counters",
                                  "/drain_listeners", "/quitquitquit"])
def test_mutating_get_is_405(admin: Running, path: str) -> None:
    assert curl(admin, admin.base + path) == (405, "Method GET not allowed, POST required.")
    assert admin.context.calls == []


def test_drain_and_quit(admin: Running) -> None:
    assert curl(admin, "-X", "POST", admin.base + "/drain_listeners?graceful&inboundonly") == (200, "OK\n")
    assert curl(admin, "-X", "POST", admin.base + "/quitquitquit") == (200, "OK\n")
    deadline = time.monotonic() + 5
    while len(admin.context.calls) < 2 and time.monotonic() < deadline:  # quit runs after the answer
        time.sleep(0.01)
    assert admin.context.calls == [("drain_listeners", "True", "True"), ("quit",)]


def test_404_clusters_listeners_misc(admin: Running) -> None:
    status, _, body = get(admin, "/nope")
    assert status == 404 and body.startswith("invalid path. admin commands are:\n")
    assert "svc::127.0.0.1:8080::cx_total::3" in get(admin, "/clusters")[2]
    assert json.loads(get(admin, "/clusters?format=json")[2])["cluster_statuses"][1]["name"] == "other"
    assert get(admin, "/listeners")[2] == "ingress::0.0.0.0:10000\nredis::127.0.0.1:6380\n"
    assert "configs" in json.loads(get(admin, "/config_dump")[2])
    assert get(admin, "/hot_restart_version")[2] == "meshproxy.1"
    status, ctype, page = get(admin, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert "<form action='/quitquitquit' method='post'>" in page
    assert get(admin, "/help")[2].startswith("admin commands are:\n")


def test_keep_alive_connection(admin: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
    for path in ("/ready", "/stats?usedonly", "/server_info", "/ready"):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    conn.close()


def test_a_slow_client_does_not_block_others(segment: Segment) -> None:
    running = Running(SegmentContext(segment), Limits(request_timeout=0.5, idle_timeout=1.0))
    try:
        slow = socket.create_connection(("127.0.0.1", running.port))
        slow.sendall(b"GET /stats HTTP/1.1\r\nHost: x")  # never finishes the head
        assert get(running, "/ready")[::2] == (200, "LIVE\n")
        slow.settimeout(3)
        assert slow.recv(100) == b""  # closed by the request timeout
        slow.close()
    finally:
        running.stop()
