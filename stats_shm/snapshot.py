"""Reading stats: sum the retained area and every live area into one ``Snapshot``.

A counter's value is ``retained + sum(live areas)``; a gauge's is the sum over live
areas (the retained area never holds gauges); a histogram's buckets and sum are merged
the same way as counters. ``Segment.snapshot`` makes that sum consistent with folds by
reading inside a seqlock; this module only does the arithmetic.

Each cell is read with ``memoryview.tolist()``, one aligned 8-byte load per cell. Gauge
cells are i64 but read through the u64 view: the sum is taken modulo 2^64 and then
reinterpreted as signed, which is exact for any sum that fits an i64.

The interval view (Envoy's "since the last flush") is reader-side: a reader keeps its
previous snapshot and calls ``current.interval(previous)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stats_shm.histogram import BUCKETS, HistogramData
from stats_shm.kinds import Kind
from stats_shm.names import NameIndex

_MASK64 = (1 << 64) - 1
_SIGN64 = 1 << 63


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Totals over all processes at one moment.

    ``used`` holds the names that have had at least one event (``inc``, ``dec``, ``set``
    or ``record``, even of 0) through any handle since the segment was created: Envoy's
    ``usedonly``.
    """

    counters: dict[str, int]
    gauges: dict[str, int]
    histograms: dict[str, HistogramData]
    used: frozenset[str]

    def interval(self, previous: Snapshot | None) -> Snapshot:
        """Counter deltas and histogram activity since ``previous``; gauges as they are now.

        A counter lower than in ``previous`` (the segment was replaced by a cold start)
        is reported as its whole current value.
        """
        if previous is None:
            return self
        prev_c = previous.counters
        counters = {}
        for name, v in self.counters.items():
            delta = v - prev_c.get(name, 0)
            counters[name] = delta if delta >= 0 else v
        prev_h = previous.histograms
        histograms = {name: h.interval(prev_h.get(name)) for name, h in self.histograms.items()}
        return Snapshot(counters, dict(self.gauges), histograms, self.used)


@dataclass(slots=True)
class AreaSums:
    """Raw cells summed over some areas: scalar slots, histogram sums, histogram buckets."""

    scalars: list[int]
    sums: list[float]
    buckets: list[int]


def sum_areas(q: memoryview, d: memoryview[float], bases: Iterable[int], n_scalars: int, n_hists: int,
              scalar_cap: int, hist_cap: int) -> AreaSums:
    """Sum the first ``n_scalars`` scalar cells and ``n_hists`` histograms of each area
    starting at the cells ``bases`` (``q``: u64 view, ``d``: f64 view of the same bytes)."""
    scalar_rows: list[list[int]] = []
    sum_rows: list[Sequence[float]] = []  # typeshed types tolist() as list[int]
    bucket_rows: list[list[int]] = []
    for base in bases:
        scalar_rows.append(q[base:base + n_scalars].tolist())
        sums = base + scalar_cap
        sum_rows.append(d[sums:sums + n_hists].tolist())
        buckets = sums + hist_cap
        bucket_rows.append(q[buckets:buckets + n_hists * BUCKETS].tolist())
    return AreaSums(
        list(map(sum, zip(*scalar_rows, strict=True))),
        list(map(sum, zip(*sum_rows, strict=True))),
        list(map(sum, zip(*bucket_rows, strict=True))),
    )


def build_snapshot(index: NameIndex, totals: AreaSums, used: frozenset[str]) -> Snapshot:
    """Attach names to summed cells (only the slots ``totals`` covers)."""
    counters: dict[str, int] = {}
    gauges: dict[str, int] = {}
    scalars = totals.scalars
    for entry in index.scalars[:len(scalars)]:
        value = scalars[entry.slot]
        if entry.kind is Kind.COUNTER:
            counters[entry.name] = value
        else:
            value &= _MASK64
            gauges[entry.name] = value - (1 << 64) if value >= _SIGN64 else value
    histograms: dict[str, HistogramData] = {}
    buckets, sums = totals.buckets, totals.sums
    for entry in index.hists[:len(sums)]:
        start = entry.slot * BUCKETS
        histograms[entry.name] = HistogramData(tuple(buckets[start:start + BUCKETS]), sums[entry.slot],
                                               entry.unit)
    return Snapshot(counters, gauges, histograms, used)
