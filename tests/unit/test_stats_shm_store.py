"""stats_shm stores and handles, in process memory (HeapStore): the API filters use."""

from __future__ import annotations

import pytest

from stats_shm import (
    OVERFLOW,
    OVERFLOWED_COUNTERS,
    OVERFLOWED_GAUGES,
    OVERFLOWED_HISTOGRAMS,
    Counter,
    Gauge,
    HeapStore,
    Histogram,
    StatBlock,
    StatsKindError,
    Unit,
    sanitize,
)


def test_counter_gauge_histogram_basics() -> None:
    store = HeapStore()
    c = store.counter("cluster.a.upstream_cx_total")
    g = store.gauge("cluster.a.upstream_cx_active")
    h = store.histogram("cluster.a.upstream_cx_connect_ms")
    c.inc()
    c.inc(41)
    g.inc()
    g.inc(5)
    g.dec(2)
    h.record(3.5)
    h.record(12.0)
    snap = store.snapshot()
    assert snap.counters["cluster.a.upstream_cx_total"] == 42
    assert snap.gauges["cluster.a.upstream_cx_active"] == 4
    hist = snap.histograms["cluster.a.upstream_cx_connect_ms"]
    assert hist.count == 2 and hist.sum == 15.5
    g.set(-7)
    assert store.snapshot().gauges["cluster.a.upstream_cx_active"] == -7


def test_handles_are_resolved_once_and_keep_their_type() -> None:
    store = HeapStore()
    c = store.counter("x")
    assert store.counter("x") is c
    c.inc()
    assert isinstance(c, Counter) and store.counter("x") is c
    g = store.gauge("y")
    g.set(1)
    assert isinstance(g, Gauge)
    h = store.histogram("z")
    h.record(1.0)
    assert isinstance(h, Histogram) and h.unit is Unit.MILLISECONDS
    assert "x" in repr(c)


def test_kind_mismatch_is_an_error() -> None:
    store = HeapStore()
    store.counter("a")
    store.histogram("h")
    with pytest.raises(StatsKindError, match="'a'"):
        store.gauge("a")
    with pytest.raises(StatsKindError):
        store.counter("h")


def test_used_means_any_event_even_zero() -> None:
    store = HeapStore()
    store.counter("never")
    store.counter("zero").inc(0)
    store.gauge("set_to_zero").set(0)
    store.gauge("untouched")
    store.histogram("recorded").record(0.0)
    store.histogram("empty")
    used = store.snapshot().used
    assert used == {"zero", "set_to_zero", "recorded"}


def test_budget_overflow_counts_and_never_raises() -> None:
    store = HeapStore(slot_budget=8, histogram_budget=2)
    counters = [store.counter(f"c{i}") for i in range(20)]
    for c in counters:
        c.inc()
    # Asking again for a refused name does not count it twice.
    store.counter("c19").inc()
    hists = [store.histogram(f"h{i}") for i in range(5)]
    for h in hists:
        h.record(1.0)
    snap = store.snapshot()
    real = [n for n in snap.counters if n.startswith("c")]
    assert real == [f"c{i}" for i in range(8)]
    assert snap.counters[OVERFLOW] == 12 + 3
    assert snap.counters[OVERFLOWED_COUNTERS] == 13
    assert snap.histograms[OVERFLOWED_HISTOGRAMS].count == 3
    assert sorted(n for n in snap.histograms if n.startswith("h")) == ["h0", "h1"]
    # Gauges share the counter/gauge slot budget: it is full.
    store.gauge("late").set(3)
    snap = store.snapshot()
    assert "late" not in snap.gauges and snap.gauges[OVERFLOWED_GAUGES] == 3


def test_stats_matcher_rejects_without_storing() -> None:
    store = HeapStore(accept=lambda name: not name.startswith("cluster.noisy."))
    kept = store.counter("cluster.ok.upstream_rq_total")
    dropped = store.counter("cluster.noisy.upstream_rq_total")
    dropped_g = store.gauge("cluster.noisy.active")
    dropped_h = store.histogram("cluster.noisy.time")
    kept.inc()
    dropped.inc(5)
    dropped_g.set(3)
    dropped_g.inc()
    dropped_g.dec()
    dropped_h.record(1.0)
    dropped_h.record_n(1.0, 4)
    snap = store.snapshot()
    assert snap.counters["cluster.ok.upstream_rq_total"] == 1
    all_names = set(snap.counters) | set(snap.gauges) | set(snap.histograms)
    assert not any(n.startswith("cluster.noisy.") for n in all_names)
    assert snap.counters[OVERFLOW] == 0


def test_interval_view() -> None:
    store = HeapStore()
    c = store.counter("c")
    g = store.gauge("g")
    h = store.histogram("h")
    c.inc(5)
    g.set(2)
    h.record(1.0)
    first = store.snapshot()
    assert first.interval(None) is first
    c.inc(3)
    h.record(2.0)
    h.record(2.0)
    second = store.snapshot()
    delta = second.interval(first)
    assert delta.counters["c"] == 3
    assert delta.gauges["g"] == 2
    assert delta.histograms["h"].count == 2 and delta.histograms["h"].sum == 4.0
    # A counter that went down (segment replaced by a cold start) reports its value.
    assert first.interval(second).counters["c"] == 5


class _ExampleStats(StatBlock):
    COUNTERS = ("downstream_cx_total", "idle_timeout")
    GAUGES = ("upstream_flush_active",)
    HISTOGRAMS = ("upstream_cx_length_ms", "latency")
    HISTOGRAM_UNITS = {"latency": Unit.MICROSECONDS}


def test_stat_block_declares_handles_with_prefix() -> None:
    store = HeapStore()
    stats = _ExampleStats(store, "tcp.ingress.")
    stats.downstream_cx_total.inc()
    stats.upstream_flush_active.inc()
    stats.upstream_cx_length_ms.record(5.0)
    assert stats.latency.unit is Unit.MICROSECONDS
    assert stats.upstream_cx_length_ms.unit is Unit.MILLISECONDS
    snap = store.snapshot()
    assert snap.counters["tcp.ingress.downstream_cx_total"] == 1
    assert snap.counters["tcp.ingress.idle_timeout"] == 0
    assert snap.gauges["tcp.ingress.upstream_flush_active"] == 1
    assert snap.histograms["tcp.ingress.upstream_cx_length_ms"].count == 1
    # Two blocks over the same names share the stats.
    _ExampleStats(store, "tcp.ingress.").downstream_cx_total.inc()
    assert store.snapshot().counters["tcp.ingress.downstream_cx_total"] == 2
    with pytest.raises(AttributeError):
        stats.not_declared  # noqa: B018


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a.b.c.", "a.b.c"),
        (".a.b.c", "a.b.c"),
        ("a::b", "a__b"),
        ("a.\0", "a._"),
        ("a://b", "a_b"),
        ("a:/b", "a_b"),
        ("0.0.0.0:10000", "0.0.0.0_10000"),
        ("[::1]:80", "[__1]_80"),
    ],
)
def test_sanitize_like_envoy(raw: str, expected: str) -> None:
    assert sanitize(raw) == expected
