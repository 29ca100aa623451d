"""Envoy's network ratelimit filter against a gRPC rate-limit service that the test runs
(``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``, protos from xds-protos):
OK, OVER_LIMIT, a slow service and a stopped one, failing open and closed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
rls_pb2 = pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2")
rls_pb2_grpc = pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2_grpc")

from integration.harness import (  # noqa: E402
    LOCALHOST,
    MeshProxy,
    Upstream,
    bootstrap,
    echo_handler,
    listener,
    static_cluster,
    tcp_proxy_filter,
    wait_for,
)
from stats_shm import Segment  # noqa: E402

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]
RATELIMIT = "type.googleapis.com/envoy.extensions.filters.network.ratelimit.v3.RateLimit"
Response = rls_pb2.RateLimitResponse


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """Answers every call with ``response`` after ``delay`` seconds; records the requests."""

    def __init__(self) -> None:
        self.response = Response(overall_code=Response.OK)
        self.delay = 0.0
        self.requests: list[Any] = []
        self.lock = threading.Lock()

    def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.requests.append(request)
        if self.delay:
            time.sleep(self.delay)
        return self.response


class Server:
    def __init__(self) -> None:
        self.service = RateLimitService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port(f"{LOCALHOST}:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None).wait(5)


@pytest.fixture
def rls_server() -> Iterator[Server]:
    server = Server()
    yield server
    server.stop()


def ratelimit(prefix: str, *, deny: bool = False, timeout: str = "2s") -> dict[str, Any]:
    return {"name": "envoy.filters.network.ratelimit", "typed_config": {
        "@type": RATELIMIT, "stat_prefix": prefix, "domain": "edge", "timeout": timeout,
        "failure_mode_deny": deny,
        "descriptors": [{"entries": [{"key": "client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
                                     {"key": "listener", "value": prefix}]}],
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "rls"}},
                               "transport_api_version": "V3"}}}


def start(start_proxy: StartProxy, upstream: Upstream, server: Server, timeout: str = "2s") -> MeshProxy:
    return start_proxy(bootstrap(
        [listener("allow", 0, ratelimit("allow", timeout=timeout), tcp_proxy_filter("backend")),
         listener("deny", 0, ratelimit("deny", deny=True, timeout=timeout), tcp_proxy_filter("backend"))],
        [static_cluster("backend", [upstream.port]), static_cluster("rls", [server.port])]), concurrency=2)


def through(port: int) -> tuple[bool, float]:
    """One connection, one byte echoed: (passed, seconds until known)."""
    begin = time.monotonic()
    with socket.create_connection((LOCALHOST, port), timeout=10) as sock:
        try:
            sock.sendall(b"x")
            ok = sock.recv(1) == b"x"
        except OSError:
            ok = False
    return ok, time.monotonic() - begin


def stats(proxy: MeshProxy, prefix: str) -> dict[str, int]:
    segment = Segment.attach(proxy.base_id, read_only=True)
    try:
        snapshot = segment.snapshot()
    finally:
        segment.close()
    values = {**snapshot.counters, **snapshot.gauges}
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix) and v}


def test_ok_and_over_limit_from_the_service(start_proxy: StartProxy, start_upstream: StartUpstream,
                                            rls_server: Server) -> None:
    upstream = start_upstream(echo_handler)
    proxy = start(start_proxy, upstream, rls_server)
    service = rls_server.service

    assert [through(proxy.ports["allow"])[0] for _ in range(3)] == [True] * 3
    request = service.requests[-1]
    assert request.domain == "edge"
    assert [(e.key, e.value) for e in request.descriptors[0].entries] == [("client", "127.0.0.1"),
                                                                         ("listener", "allow")]

    limit = Response.RateLimit(requests_per_unit=10, unit=Response.RateLimit.MINUTE)
    status = Response.DescriptorStatus(code=Response.OK, current_limit=limit, limit_remaining=1)
    service.response = Response(overall_code=Response.OK, statuses=[status])
    assert through(proxy.ports["allow"])[0]  # 9 of 10 used: near the limit, still OK

    service.response = Response(overall_code=Response.OVER_LIMIT)
    assert [through(proxy.ports[name])[0] for name in ("allow", "deny")] == [False, False]

    allow = stats(proxy, "ratelimit.allow.")
    assert allow == {"total": 6, "ok": 5, "near_limit": 1, "over_limit": 1, "cx_closed": 1}  # 1 probe
    assert stats(proxy, "ratelimit.deny.") == {"total": 2, "ok": 1, "over_limit": 1, "cx_closed": 1}


def test_slow_or_stopped_service_fails_open_or_closed(start_proxy: StartProxy, start_upstream: StartUpstream,
                                                      rls_server: Server) -> None:
    upstream = start_upstream(echo_handler)
    timeout = 0.5
    proxy = start(start_proxy, upstream, rls_server, timeout=f"{timeout}s")

    # The readiness probes' decisions (a cold channel each) must be over before counting.
    wait_for(lambda: all("active" not in stats(proxy, f"ratelimit.{name}.") for name in ("allow", "deny")),
             10, "the probes' decisions")
    before = {name: stats(proxy, f"ratelimit.{name}.") for name in ("allow", "deny")}
    rls_server.service.delay = 2.0  # slower than the filter's timeout
    ok_allow, t_allow = through(proxy.ports["allow"])
    ok_deny, t_deny = through(proxy.ports["deny"])
    assert (ok_allow, ok_deny) == (True, False)
    assert timeout * 0.8 < t_allow < timeout + 1.0
    assert timeout * 0.8 < t_deny < timeout + 1.0

    rls_server.stop()  # down: the call fails without waiting for the timeout
    results = [through(proxy.ports[name]) for name in ("allow", "deny", "allow", "deny")]
    assert [ok for ok, _ in results] == [True, False, True, False]
    assert max(t for _, t in results) < timeout + 1.0

    def delta(name: str) -> dict[str, int]:
        after = stats(proxy, f"ratelimit.{name}.")
        return {k: v - before[name].get(k, 0) for k, v in after.items() if v != before[name].get(k, 0)}

    assert delta("allow") == {"total": 3, "error": 3, "failure_mode_allowed": 3}
    assert delta("deny") == {"total": 3, "error": 3, "cx_closed": 3}
