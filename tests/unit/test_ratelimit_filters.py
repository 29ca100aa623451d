"""The rate-limit filters driven with fake callbacks; the Redis algorithms and the circuit breaker
without Redis (sans-IO); the gRPC client's request and near-limit reading without a server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from filters.api import ConnectionEvent, FilterStatus, NetworkFilter
from filters.connection_limit import filter as connection_limit
from filters.connection_limit.config import ConnectionLimitConfig
from filters.local_ratelimit import filter as local_ratelimit
from filters.local_ratelimit.config import LocalRateLimitConfig, TokenBucket
from filters.local_ratelimit.shared_bucket import HostSharedRegion
from filters.ratelimit.descriptors import DescriptorSet, Entry
from filters.ratelimit.filter import NEAR_LIMIT, SHADOW_OVER_LIMIT, Done, LimitStatus, factory
from filters.ratelimit.stats import RateLimitStats
from filters.redis_ratelimit.algorithms import Algorithm, decide, gcra_parameters, limited, script_arguments
from filters.redis_ratelimit.breaker import BreakerState, CircuitBreaker
from filters.redis_ratelimit.lyft_config import RateLimitRule, Unit
from stats_shm import HeapStore

CONTINUE, STOP = FilterStatus.CONTINUE, FilterStatus.STOP_ITERATION


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> Any:
        entry = (delay, fn)
        self.timers.append(entry)

        class Handle:
            def cancel(_self) -> None:
                if entry in self.timers:
                    self.timers.remove(entry)

        return Handle()


class Info:
    id = 1
    remote_address = ("10.0.0.7", 40000)
    local_address = ("127.0.0.1", 8080)
    start_time = 0.0


class Callbacks:
    """A connection as a filter sees it; ``close`` tells the filters, as the real one does."""

    def __init__(self, filters: list[NetworkFilter], loop: FakeLoop | None = None) -> None:
        self.info = Info()
        self.loop = loop or FakeLoop()
        self.filters = filters
        self.closed: bool | None = None  # None: open; else the flush flag
        self.continued = 0
        for f in filters:
            f.initialize(self)  # type: ignore[arg-type]

    def close(self, flush: bool = True) -> None:
        if self.closed is None:
            self.closed = flush
            for f in self.filters:
                f.on_event(ConnectionEvent.LOCAL_CLOSE)

    def continue_reading(self) -> None:
        self.continued += 1


class Worker:
    def __init__(self, region: HostSharedRegion) -> None:
        self.stats = HeapStore()
        self.host_shared = region
        self.loop = FakeLoop()


@pytest.fixture
def worker() -> Iterator[Worker]:
    region = HostSharedRegion.create("test_limits", slots=8)
    yield Worker(region)
    region.close()


def counters(worker: Worker, prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in worker.stats.snapshot().counters.items() if k.startswith(prefix)}


# ----- local_ratelimit / connection_limit ------------------------------------------------------


def test_local_ratelimit_closes_at_once_when_the_bucket_is_empty(worker: Worker) -> None:
    config = LocalRateLimitConfig("edge", TokenBucket(2, 1, 60.0), True, "path:x")
    make = local_ratelimit.build(config, worker)  # type: ignore[arg-type]
    results = []
    for _ in range(3):
        f = make()
        conn = Callbacks([f])
        results.append((f.on_new_connection(), conn.closed))
    assert results == [(CONTINUE, None), (CONTINUE, None), (STOP, False)]  # closed with no flush
    assert counters(worker, "local_rate_limit.edge.") == {"rate_limited": 1}


def test_local_ratelimit_runtime_disabled_passes_everything(worker: Worker) -> None:
    make = local_ratelimit.build(LocalRateLimitConfig("edge", TokenBucket(1, 1, 60.0), False, "k"),
                                 worker)  # type: ignore[arg-type]
    assert [make().on_new_connection() for _ in range(3)] == [CONTINUE] * 3


def test_connection_limit_counts_open_connections_and_delays_the_close(worker: Worker) -> None:
    make = connection_limit.build(ConnectionLimitConfig("c", 2, 0.5, True, "path:c"), worker)  # type: ignore[arg-type]
    conns = []
    for _ in range(3):
        f = make()
        conn = Callbacks([f])
        conns.append((conn, f.on_new_connection()))
    assert [status for _, status in conns] == [CONTINUE, CONTINUE, STOP]
    rejected = conns[2][0]
    assert rejected.closed is None and [d for d, _ in rejected.loop.timers] == [0.5]
    rejected.loop.timers[0][1]()  # the delay ends
    assert rejected.closed is False
    gauges = worker.stats.snapshot().gauges
    assert gauges["connection_limit.c.active_connections"] == 2
    conns[0][0].close()  # one admitted connection ends: room for one more
    f = make()
    Callbacks([f])
    assert f.on_new_connection() is CONTINUE
    assert counters(worker, "connection_limit.c.") == {"limited_connections": 1}


# ----- the global filter, with a fake limiter client -----------------------------------------------


class FakeClient:
    def __init__(self, inline: tuple[LimitStatus, int] | None = None) -> None:
        self.inline = inline
        self.calls: list[tuple[Any, Done]] = []
        self.cancelled = 0

    def limit(self, descriptors: Any, done: Done) -> Any:
        if self.inline is not None:
            done(*self.inline)
            return None
        self.calls.append((descriptors, done))
        client = self

        class Pending:
            def cancel(self) -> None:
                client.cancelled += 1

        return Pending()


DESCRIPTORS = DescriptorSet(((Entry("client", ("ip-", lambda info: info.remote_address[0])),),))


def run(client: FakeClient, deny: bool = False) -> tuple[Callbacks, FilterStatus, HeapStore]:
    store = HeapStore()
    f = factory(client, DESCRIPTORS, deny, RateLimitStats(store, "ratelimit.g."))()
    conn = Callbacks([f])
    return conn, f.on_new_connection(), store


def values(store: HeapStore) -> dict[str, int]:
    """The filter's non-zero stats, without the ``ratelimit.g.`` prefix."""
    snapshot = store.snapshot()
    everything = {**snapshot.counters, **snapshot.gauges}
    return {name[len("ratelimit.g."):]: value for name, value in everything.items() if value}


def test_pending_decision_holds_the_chain_then_continues() -> None:
    client = FakeClient()
    conn, status, stats = run(client)
    assert status is STOP
    assert client.calls[0][0] == ((("client", "ip-10.0.0.7"),),)  # operators substituted per connection
    assert values(stats) == {"total": 1, "active": 1}
    client.calls[0][1](LimitStatus.OK, NEAR_LIMIT | SHADOW_OVER_LIMIT)
    assert conn.continued == 1 and conn.closed is None
    assert values(stats) == {"total": 1, "ok": 1, "near_limit": 1, "shadow_over_limit": 1}


@pytest.mark.parametrize(("answer", "deny", "closed", "expected"), [
    (LimitStatus.OVER_LIMIT, False, False, {"total": 1, "over_limit": 1, "cx_closed": 1}),
    (LimitStatus.ERROR, False, None, {"total": 1, "error": 1, "failure_mode_allowed": 1}),
    (LimitStatus.ERROR, True, False, {"total": 1, "error": 1, "cx_closed": 1}),
])
def test_over_limit_and_failure_modes(answer: LimitStatus, deny: bool, closed: bool | None,
                                      expected: dict[str, int]) -> None:
    client = FakeClient()
    conn, _, stats = run(client, deny)
    client.calls[0][1](answer, 0)
    assert conn.closed is closed  # False: closed with no flush
    assert conn.continued == (1 if closed is None else 0)
    assert values(stats) == expected


def test_inline_answers_need_no_continue_reading() -> None:
    conn, status, stats = run(FakeClient(inline=(LimitStatus.OK, 0)))
    assert (status, conn.continued) == (CONTINUE, 0)
    conn, status, stats = run(FakeClient(inline=(LimitStatus.OVER_LIMIT, 0)))
    assert (status, conn.closed) == (STOP, False)
    assert values(stats) == {"total": 1, "over_limit": 1, "cx_closed": 1}


def test_close_while_pending_cancels_the_decision() -> None:
    client = FakeClient()
    conn, _, stats = run(client)
    conn.close()
    assert client.cancelled == 1
    client.calls[0][1](LimitStatus.OK, 0)  # a late answer is ignored
    assert conn.continued == 0
    assert values(stats) == {"total": 1}


# ----- Redis algorithms, sans-IO ---------------------------------------------------------------------


def rule(rpu: int, unit: Unit = Unit.SECOND, shadow: bool = False) -> RateLimitRule:
    return RateLimitRule(rpu, unit, shadow_mode=shadow)


def test_fixed_window_keys_are_lyfts() -> None:
    fixed = Algorithm.FIXED_WINDOW
    items = [limited(rule(10, Unit.MINUTE), "", "mongo_cps", (("database", "users"),), fixed),
             limited(rule(5, Unit.HOUR), "pfx_", "d", (("a", "1"), ("b", "2")), fixed)]
    keys, args = script_arguments(Algorithm.FIXED_WINDOW, [items], now=1_700_000_123)
    # Lyft's cache_key.go: <prefix><domain>_<key>_<value>_..._<now // divider * divider>
    assert keys == ["mongo_cps_database_users_1700000100", "pfx_d_a_1_b_2_1699999200"]
    assert args == [60, 3600]


def test_fixed_window_decisions() -> None:
    items = [limited(rule(10), "", "d", (("k", "v"),), Algorithm.FIXED_WINDOW)]
    shadow = [limited(rule(2, shadow=True), "", "d", (("s", "v"),), Algorithm.FIXED_WINDOW)]
    both = items + shadow
    answers = decide(Algorithm.FIXED_WINDOW, [items, items, items, both, both], [8, 9, 11, 3, 3, 3, 1], 0.8)
    assert answers == [
        (LimitStatus.OK, 0),  # 8 = floor(0.8 * 10): not above it
        (LimitStatus.OK, NEAR_LIMIT),
        (LimitStatus.OVER_LIMIT, 0),
        (LimitStatus.OK, SHADOW_OVER_LIMIT),  # the shadow descriptor is over; it never refuses
        (LimitStatus.OK, 0),
    ]
    with pytest.raises(ValueError, match="expected 1 integers"):
        decide(Algorithm.FIXED_WINDOW, [items], [b"OK", 1], 0.8)


def test_gcra_arguments_and_decisions() -> None:
    assert gcra_parameters(rule(20)) == (50_000, 19 * 50_000)  # T = 1s / 20, burst 20
    assert gcra_parameters(rule(0)) == (1_000_000, -1)  # never conforms
    a = limited(rule(20), "", "d", (("k", "v"),), Algorithm.GCRA)
    b = limited(rule(4, shadow=True), "", "d", (("s", "v"),), Algorithm.GCRA)
    keys, args = script_arguments(Algorithm.GCRA, [[a, b], [a]], now=0)
    assert keys == ["d_k_v_gcra", "d_s_v_gcra", "d_k_v_gcra"]
    assert args == [50_000, 950_000, 0, 0, 250_000, 750_000, 1, 1, 50_000, 950_000, 0, 1]
    assert decide(Algorithm.GCRA, [[a, b], [a]], [0, 17, 1, 5, 1, 20], 0.8) == [
        (LimitStatus.OK, NEAR_LIMIT | SHADOW_OVER_LIMIT), (LimitStatus.OVER_LIMIT, 0)]


# ----- circuit breaker -----------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_probes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(3, 1.0, lambda: now[0])
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 1.0
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN and not breaker.allow()
    breaker.record_failure()  # the probe failed: open again for another second
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 2.5
    assert breaker.allow()
    now[0] = 3.5
    assert breaker.allow()  # a probe that never reported back is replaced
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


# ----- gRPC client helpers ------------------------------------------------------------------------


def test_grpc_request_and_near_limit() -> None:
    rls_pb2 = pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2")  # the meshproxy[grpc] extra
    grpc_client = pytest.importorskip("filters.ratelimit.grpc_client")
    build_request, near_limit = grpc_client.build_request, grpc_client.near_limit

    request = build_request("edge", ((("a", "1"), ("b", "2")),))
    assert request.domain == "edge"
    assert [(e.key, e.value) for e in request.descriptors[0].entries] == [("a", "1"), ("b", "2")]
    response = rls_pb2.RateLimitResponse
    status = response.DescriptorStatus
    limit = response.RateLimit(requests_per_unit=10, unit=response.RateLimit.SECOND)
    def remaining(n: int) -> Any:
        return response(statuses=[status(code=response.OK, current_limit=limit, limit_remaining=n)])

    assert not near_limit(remaining(2))  # 8 used of 10: not above floor(0.8 * 10)
    assert near_limit(remaining(1))
    assert not near_limit(response(statuses=[status(code=response.OK)]))  # no limit reported


def test_stat_names_are_fixed_and_tagged_by_prefix() -> None:
    from meshproxy.admin.tags import default_producer

    client = FakeClient()
    _, _, store = run(client)
    client.calls[0][1](LimitStatus.OK, NEAR_LIMIT)
    snapshot = store.snapshot()
    names = [*snapshot.counters, *snapshot.gauges]
    assert not [n for n in names if "10.0.0.7" in n]  # a descriptor value never names a stat
    produce = default_producer().produce
    assert produce("ratelimit.g.near_limit") == ("ratelimit.near_limit", (("envoy.ratelimit_prefix", "g"),))
    assert produce("local_rate_limit.edge.rate_limited") == (
        "local_rate_limit.rate_limited", (("envoy.local_network_ratelimit_prefix", "edge"),))
