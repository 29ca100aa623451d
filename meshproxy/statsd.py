"""The statsd sink (``envoy.stat_sinks.statsd`` over UDP, envoy-subset.md §11).

The main process calls ``StatsdSink.flush(snapshot)`` every ``stats_flush_interval``
with the merged snapshot of all processes. Lines are ``<prefix>.<full stat name>``
(not tag-extracted, no tags), as Envoy sends them:

* counters: ``envoy.cluster.a.upstream_rq_total:3|c``, the **delta** since the previous
  flush, for every counter ever used (``Snapshot.used``), even when the delta is 0. The
  first flush sends the whole value unless ``prime(snapshot)`` set a baseline (a new
  main process taking over a segment after a hot restart should prime, so the old
  generation's flushed totals are not sent twice);
* gauges: ``…upstream_cx_active:2|g``, the current value, for gauges ever used; a
  negative value is sent as 0 (a statsd ``-N|g`` means "subtract N");
* histograms: Envoy sends each sample as it is recorded. Workers only bump shared
  bucket counters, so the main process knows, per flush interval, how many samples fell
  in each fine bucket (stats_shm/histogram.py: 16 per octave, ≤ 6.25% wide). For every
  non-empty bucket we send **one line carrying the bucket's midpoint and a sample rate
  of 1/count**: ``…upstream_rq_time:12.375|ms|@0.25`` means four samples of ~12.4 ms.
  statsd servers scale counts by ``1/rate``, so sample counts are exact (to the printed
  precision of the rate) and each value is within ~3% of the true one; percentiles
  computed by the statsd server are as good as the buckets. Percent-unit histograms use
  ``|h``, every other unit ``|ms`` (as Envoy). A bucket with a single sample has no rate.
* names starting with ``_`` (internal per-host stats) are not sent.

Lines are packed, ``\\n``-separated, into datagrams of at most ``max_datagram`` (1400)
bytes so they fit in one Ethernet frame; a single longer line goes alone. The socket is
non-blocking and unconnected; a send that fails (buffer full, no route, ...) drops that
datagram and is counted in ``send_errors``: ``flush`` never raises because of the
network.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Final

from stats_shm import HistogramData, Snapshot, Unit, bucket_bounds

log = logging.getLogger("meshproxy.statsd")

MAX_DATAGRAM: Final = 1400


def _value(v: float) -> str:
    """A short decimal for a bucket value (6 significant digits, no exponent)."""
    text = f"{v:.6g}"
    if "e" in text:
        text = f"{v:.0f}" if abs(v) >= 1 else f"{v:.9f}".rstrip("0").rstrip(".")
    return text


def histogram_lines(name: str, data: HistogramData) -> Iterator[str]:
    """One ``name:VALUE|ms[|@RATE]`` line per non-empty bucket of ``data``."""
    kind = "h" if data.unit is Unit.PERCENT else "ms"
    for index, count in enumerate(data.buckets):
        if count <= 0:
            continue
        lo, hi = bucket_bounds(index)
        value = _value(0.0 if index == 0 else (lo + hi) / 2)
        if count == 1:
            yield f"{name}:{value}|{kind}"
        else:
            yield f"{name}:{value}|{kind}|@{1 / count:.10g}"


class StatsdSink:
    """Sends snapshots to a statsd server over UDP (see the module docstring)."""

    def __init__(self, address: tuple[str, int], prefix: str = "envoy", *,
                 max_datagram: int = MAX_DATAGRAM) -> None:
        self.address = address
        self.prefix = prefix + "." if prefix else ""
        self.max_datagram = max_datagram
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._previous: Snapshot | None = None
        self.flushes = 0
        self.datagrams_sent = 0
        self.lines_sent = 0
        self.send_errors = 0

    def prime(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the baseline of the next flush's deltas."""
        self._previous = snapshot

    def lines(self, snapshot: Snapshot) -> list[str]:
        """The lines one flush of ``snapshot`` sends (and it becomes the baseline)."""
        previous = self._previous
        prefix, used = self.prefix, snapshot.used
        out: list[str] = []
        prev_counters = previous.counters if previous is not None else {}
        for name, value in snapshot.counters.items():
            if name in used and not name.startswith("_"):
                delta = value - prev_counters.get(name, 0)
                out.append(f"{prefix}{name}:{delta if delta >= 0 else value}|c")
        for name, value in snapshot.gauges.items():
            if name in used and not name.startswith("_"):
                out.append(f"{prefix}{name}:{max(value, 0)}|g")
        prev_hists = previous.histograms if previous is not None else {}
        for name, data in snapshot.histograms.items():
            if not name.startswith("_"):
                out.extend(histogram_lines(prefix + name, data.interval(prev_hists.get(name))))
        self._previous = snapshot
        return out

    def flush(self, snapshot: Snapshot) -> None:
        """Send one flush; never raises for network errors (they are counted)."""
        self.flushes += 1
        lines = self.lines(snapshot)
        for datagram in pack(lines, self.max_datagram):
            try:
                self._sock.sendto(datagram, self.address)
            except OSError as exc:
                self.send_errors += 1
                if self.send_errors & (self.send_errors - 1) == 0:  # log the 1st, 2nd, 4th, 8th, ...
                    log.warning("statsd %s:%d: send failed (%d so far): %s", self.address[0], self.address[1],
                                self.send_errors, exc)
                continue
            self.datagrams_sent += 1
        self.lines_sent += len(lines)

    def close(self) -> None:
        self._sock.close()


def pack(lines: list[str], limit: int = MAX_DATAGRAM) -> Iterator[bytes]:
    """Join lines with ``\\n`` into datagrams of at most ``limit`` bytes (a longer line alone)."""
    batch: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode()
        extra = len(data) + (1 if batch else 0)
        if batch and size + extra > limit:
            yield b"\n".join(batch)
            batch, size = [], 0
            extra = len(data)
        batch.append(data)
        size += extra
    if batch:
        yield b"\n".join(batch)
