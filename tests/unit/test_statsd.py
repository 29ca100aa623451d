"""The statsd sink, received by a real UDP socket: deltas, gauges, timers, packing, errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from meshproxy.statsd import MAX_DATAGRAM, StatsdSink, histogram_lines, pack
from stats_shm import HeapStore, Unit


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> list[bytes]:
    """All datagrams currently waiting (the sink sends synchronously on loopback)."""
    datagrams = [sock.recv(65536)]
    sock.settimeout(0.1)
    try:
        while True:
            datagrams.append(sock.recv(65536))
    except TimeoutError:
        pass
    finally:
        sock.settimeout(2.0)
    return datagrams


def lines_of(datagrams: list[bytes]) -> list[str]:
    return [line for d in datagrams for line in d.decode().split("\n")]


def test_counters_are_deltas_across_flushes(receiver: socket.socket) -> None:
    store = HeapStore()
    rq = store.counter("cluster.a.upstream_rq_total")
    idle = store.counter("cluster.a.idle")
    store.counter("cluster.a.never")  # never used: never sent
    store.counter("_host.a.1.2.3.4:80.rq_total").inc()  # internal: never sent
    gauge = store.gauge("cluster.a.upstream_cx_active")
    rq.inc(3)
    idle.inc(0)  # used, with nothing counted
    gauge.set(2)
    sink = StatsdSink(receiver.getsockname(), "envoy")
    sink.flush(store.snapshot())
    first = lines_of(receive(receiver))
    assert "envoy.cluster.a.upstream_rq_total:3|c" in first
    assert "envoy.cluster.a.idle:0|c" in first
    assert "envoy.cluster.a.upstream_cx_active:2|g" in first
    assert not any("never" in line or "_host" in line for line in first)
    rq.inc(4)
    gauge.set(1)
    sink.flush(store.snapshot())
    second = lines_of(receive(receiver))
    assert "envoy.cluster.a.upstream_rq_total:4|c" in second
    assert "envoy.cluster.a.idle:0|c" in second  # every counter ever used, even with delta 0
    assert "envoy.cluster.a.upstream_cx_active:1|g" in second
    assert sink.send_errors == 0 and sink.flushes == 2


def test_prime_sets_the_baseline(receiver: socket.socket) -> None:
    store = HeapStore()
    c = store.counter("c")
    c.inc(100)
    sink = StatsdSink(receiver.getsockname(), "p")
    sink.prime(store.snapshot())  # e.g. a hot-restarted main process taking over the segment
    c.inc(1)
    sink.flush(store.snapshot())
    assert "p.c:1|c" in lines_of(receive(receiver))


def test_histograms_as_timers_with_sample_rates(receiver: socket.socket) -> None:
    store = HeapStore()
    h = store.histogram("cluster.a.upstream_rq_time")
    for v in (12, 12, 12, 12, 300):
        h.record(v)
    store.histogram("pct", Unit.PERCENT).record(50)
    sink = StatsdSink(receiver.getsockname(), "envoy")
    sink.flush(store.snapshot())
    lines = [line for line in lines_of(receive(receiver)) if "upstream_rq_time" in line]
    assert len(lines) == 2
    four = next(line for line in lines if line.endswith("|@0.25"))
    name, _, rest = four.partition(":")
    value = float(rest.split("|")[0])
    assert name == "envoy.cluster.a.upstream_rq_time" and rest.split("|")[1] == "ms"
    assert abs(value - 12) / 12 < 0.04  # bucket midpoint: within ~3% of the samples
    one = next(line for line in lines if line is not four)
    assert one.count("|") == 1 and abs(float(one.split(":")[1].split("|")[0]) - 300) / 300 < 0.04
    # Only the interval goes out: nothing new, no timer lines.
    assert not any("upstream_rq_time" in line for line in sink.lines(store.snapshot()))


def test_percent_histograms_use_h() -> None:
    store = HeapStore()
    store.histogram("pct", Unit.PERCENT).record(50)
    [line] = histogram_lines("pct", store.snapshot().histograms["pct"])
    assert line.endswith("|h") and line.startswith("pct:")


def test_datagrams_are_at_most_1400_bytes(receiver: socket.socket) -> None:
    store = HeapStore()
    for i in range(300):
        store.counter(f"cluster.cluster_number_{i:04d}.upstream_rq_total").inc(i)
    sink = StatsdSink(receiver.getsockname(), "envoy")
    sink.flush(store.snapshot())
    datagrams = receive(receiver)
    assert len(datagrams) > 1 and all(len(d) <= MAX_DATAGRAM for d in datagrams)
    lines = lines_of(datagrams)
    assert len([line for line in lines if "cluster_number_" in line]) == 300
    assert "envoy.cluster.cluster_number_0299.upstream_rq_total:299|c" in lines
    assert sink.datagrams_sent == len(datagrams)


def test_pack() -> None:
    assert list(pack(["a" * 10, "b" * 10], limit=21)) == [b"a" * 10 + b"\n" + b"b" * 10]
    assert list(pack(["a" * 10, "b" * 10], limit=20)) == [b"a" * 10, b"b" * 10]
    assert list(pack(["x" * 50, "y"], limit=20)) == [b"x" * 50, b"y"]  # a long line goes alone
    assert list(pack([])) == []


def test_send_errors_are_counted_not_raised() -> None:
    store = HeapStore()
    store.counter("c").inc()
    sink = StatsdSink(("127.0.0.1", 9), "envoy", max_datagram=MAX_DATAGRAM)
    sink._sock.close()  # every send now fails with EBADF
    sink.flush(store.snapshot())
    assert sink.send_errors == 1 and sink.datagrams_sent == 0


def test_nobody_listening_does_not_raise() -> None:
    store = HeapStore()
    store.counter("c").inc()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()  # a port with no listener: ICMP port unreachable
    sink = StatsdSink(address, "envoy")
    for _ in range(3):
        sink.flush(store.snapshot())
    assert sink.flushes == 3
