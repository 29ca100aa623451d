"""The Redis-backed global limiter against a real ``redis-server``: one limit shared by separate
meshproxy instances, shadow mode, the GCRA algorithm at a window edge, and Redis failures.

Each test gets its own redis-server (``--save "" --appendonly no``) on a free port, stopped
by PID. The harness's readiness probe makes one decision per listener per proxy; the
figures below include those.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import uvloop

from filters.ratelimit.descriptors import DescriptorSet
from filters.ratelimit.filter import LimitStatus
from filters.redis_ratelimit.algorithms import Algorithm
from filters.redis_ratelimit.config import CircuitBreakerConfig, RedisRateLimitConfig
from filters.redis_ratelimit.limiter import RedisLimiter
from filters.redis_ratelimit.lyft_config import parse_lyft_config
from filters.redis_ratelimit.stats import RedisRateLimitStats
from integration.harness import (
    LOCALHOST,
    MeshProxy,
    Upstream,
    bootstrap,
    echo_handler,
    free_port,
    listener,
    static_cluster,
    tcp_proxy_filter,
    wait_for,
)
from stats_shm import HeapStore, Segment

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]
REDIS_RL = "type.googleapis.com/meshproxy.filters.network.redis_ratelimit.v1.RedisRateLimit"
CLIENT = [{"entries": [{"key": "client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]}]


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        wait_for(self._pings(client), 10, "redis-server to answer")
        client.close()

    @staticmethod
    def _pings(client: redis.Redis) -> Callable[[], bool]:
        def ping() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
        return ping

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()  # also ends a SIGSTOPped server
        self.proc.wait(10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def redis_ratelimit(server: RedisServer, limits: list[dict[str, Any]], *, prefix: str = "rl",
                    **fields: Any) -> dict[str, Any]:
    typed = {"@type": REDIS_RL, "stat_prefix": prefix, "domain": "edge", "descriptors": CLIENT,
             "limits": {"domain": "edge", "descriptors": limits}, "redis_url": server.url, "timeout": "1s",
             **fields}
    return {"name": "meshproxy.filters.network.redis_ratelimit", "typed_config": typed}


def client_limit(requests: int, unit: str = "hour", **extra: Any) -> list[dict[str, Any]]:
    return [{"key": "client", "rate_limit": {"unit": unit, "requests_per_unit": requests}, **extra}]


def stats(proxy: MeshProxy, prefix: str) -> dict[str, int]:
    segment = Segment.attach(proxy.base_id, read_only=True)
    try:
        counters = segment.snapshot().counters
    finally:
        segment.close()
    return {k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix) and v}


def through(port: int) -> bool:
    """One connection, one byte echoed; False if the proxy closed it."""
    with socket.create_connection((LOCALHOST, port), timeout=10) as sock:
        try:
            sock.sendall(b"x")
            return sock.recv(1) == b"x"
        except OSError:
            return False


def concurrently(ports: list[int]) -> list[bool]:
    results = [False] * len(ports)

    def run(i: int) -> None:
        results[i] = through(ports[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ports))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


# ----- one limit for every proxy --------------------------------------------------------------------


def test_two_proxies_share_one_global_limit_and_shadow_mode_never_blocks(
        redis_server: RedisServer, start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    upstream = start_upstream(echo_handler)
    enforced = redis_ratelimit(redis_server, client_limit(30), prefix="enforced")
    shadow_gcra = redis_ratelimit(redis_server, client_limit(5, shadow_mode=True), prefix="shadow",
                                  algorithm="GCRA")
    config = bootstrap([listener("enforced", 0, enforced, tcp_proxy_filter("backend")),
                        listener("shadow", 0, shadow_gcra, tcp_proxy_filter("backend"))],
                       [static_cluster("backend", [upstream.port])])
    a = start_proxy(config, concurrency=2, name="a")
    b = start_proxy(config, concurrency=2, name="b")

    ports = [(a if i % 2 else b).ports["enforced"] for i in range(100)]
    passed = sum(concurrently(ports))
    # 30 per hour for this client across both proxies (4 workers); the 2 probes took 2.
    assert passed == 28
    sa, sb = stats(a, "ratelimit.enforced."), stats(b, "ratelimit.enforced.")
    assert sa["total"] + sb["total"] == 102
    assert sa["over_limit"] + sb["over_limit"] == 72 == sa["cx_closed"] + sb["cx_closed"]
    assert sa.get("near_limit", 0) + sb.get("near_limit", 0) == 6  # counts 25..30 of 30
    assert "error" not in sa and "error" not in sb

    results = [through(a.ports["shadow"]) for _ in range(20)]
    assert all(results)  # shadow mode counts, never blocks
    shadow = stats(a, "ratelimit.shadow.")
    assert shadow["total"] == 21 and shadow["ok"] == 21
    assert shadow["shadow_over_limit"] == 17  # burst of 5: 2 probes + 3 of these, then over
    assert "over_limit" not in shadow and "cx_closed" not in shadow


# ----- GCRA at a window edge, in-process against the same Redis -----------------------------------


def decide_bursts(server: RedisServer, algorithm: Algorithm, limit: int) -> tuple[int, int, float]:
    """``limit`` decisions just before a second boundary and ``limit`` just after it; returns
    (admitted before, admitted after, seconds from the first to the last decision)."""
    limits = parse_lyft_config({"domain": "edge", "descriptors": client_limit(limit, unit="second")})
    config = RedisRateLimitConfig("p", "edge", DescriptorSet(()), limits, server.url, algorithm=algorithm,
                                  timeout=2.0, circuit_breaker=CircuitBreakerConfig(100, 1.0))
    descriptors = ((("client", algorithm.name),),)

    async def burst(limiter: RedisLimiter) -> int:
        loop = asyncio.get_running_loop()
        futures = []
        for _ in range(limit):
            future: asyncio.Future[LimitStatus] = loop.create_future()
            limiter.limit(descriptors, lambda status, flags, f=future: f.set_result(status))
            futures.append(future)
        return sum(status is LimitStatus.OK for status in await asyncio.gather(*futures))

    async def main() -> tuple[int, int, float]:
        limiter = RedisLimiter(config, asyncio.get_running_loop(), RedisRateLimitStats(HeapStore(), "r."))
        limiter.start()
        await asyncio.sleep(0.2)
        await asyncio.sleep(1.85 - time.time() % 1.0)  # to 0.85 s into a second
        start = time.monotonic()
        before = await burst(limiter)
        into_second = time.time() % 1.0
        if into_second > 0.5:  # still before the edge: go to just after it
            await asyncio.sleep(1.02 - into_second)
        after = await burst(limiter)
        elapsed = time.monotonic() - start
        await limiter.close()
        return before, after, elapsed

    return uvloop.run(main())


def test_gcra_has_no_double_burst_at_a_window_edge(redis_server: RedisServer) -> None:
    limit = 20  # per second
    before, after, _ = decide_bursts(redis_server, Algorithm.FIXED_WINDOW, limit)
    assert (before, after) == (limit, limit)  # Lyft's fixed window: twice the limit across the edge
    before, after, elapsed = decide_bursts(redis_server, Algorithm.GCRA, limit)
    assert before == limit
    # GCRA has no edge: after the burst only what the rate earned since (one per 50 ms) passes.
    assert after <= int(elapsed * limit) + 1, (after, elapsed)
    assert before + after < 2 * limit


# ----- Redis failures -------------------------------------------------------------------------------


def timed_through(port: int) -> tuple[bool, float]:
    start = time.monotonic()
    ok = through(port)
    return ok, time.monotonic() - start


def test_redis_down_fails_open_or_closed_within_the_timeout(
        redis_server: RedisServer, start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    upstream = start_upstream(echo_handler)
    timeout = 0.3
    common = {"timeout": f"{timeout}s", "circuit_breaker": {"failure_threshold": 2, "open_duration": "0.5s"}}
    proxy = start_proxy(bootstrap([
        listener("open", 0, redis_ratelimit(redis_server, client_limit(1000), prefix="open", **common),
                 tcp_proxy_filter("backend")),
        listener("closed", 0, redis_ratelimit(redis_server, client_limit(1000), prefix="closed",
                                              failure_mode_deny=True, **common), tcp_proxy_filter("backend")),
    ], [static_cluster("backend", [upstream.port])]), concurrency=2)
    assert through(proxy.ports["open"]) and through(proxy.ports["closed"])

    # Frozen: connects succeed, nothing answers. Each decision waits at most the timeout, and
    # once a worker's breaker opens, not at all.
    redis_server.signal(signal.SIGSTOP)
    opened = [timed_through(proxy.ports["open"]) for _ in range(8)]
    closed = [timed_through(proxy.ports["closed"]) for _ in range(8)]
    assert [ok for ok, _ in opened] == [True] * 8  # fail open
    assert [ok for ok, _ in closed] == [False] * 8  # fail closed
    slack = 1.0  # a busy CI machine; the point is "not more than the timeout", and "mostly at once"
    assert max(t for _, t in opened + closed) < timeout + slack
    assert sum(t < timeout / 2 for _, t in opened) >= 3, opened
    open_stats, closed_stats = stats(proxy, "ratelimit.open."), stats(proxy, "ratelimit.closed.")
    assert open_stats["error"] == open_stats["failure_mode_allowed"] == 8
    assert open_stats["circuit_open"] >= 3
    assert closed_stats["error"] == closed_stats["cx_closed"] == 8
    assert "failure_mode_allowed" not in closed_stats

    # Gone: connections are refused, so the probes after each open period fail at once too.
    redis_server.stop()
    time.sleep(0.6)  # past the open period: the next decisions are probes
    refused = [timed_through(proxy.ports["open"]) for _ in range(4)]
    assert all(ok for ok, _ in refused)
    assert max(t for _, t in refused) < timeout, refused
