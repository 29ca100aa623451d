"""Shared-memory stats: counters, gauges and histograms written by every process.

One segment per meshproxy instance (``/dev/shm/meshproxy_stats_<base_id>``). Each
process writes only its own *area* through handles resolved once by name; readers sum
the retained totals of exited processes and every live area inside a seqlock. See
docs/stats.md and the module docstrings:

* ``layout``    the bytes of the segment and the check that refuses another layout
* ``segment``   create / attach, areas, stores, snapshots
* ``areas``     claim, release (fold into the retained area), crash recovery
* ``names``     the shared name table and the budgets
* ``store``     name -> handle (stats matcher, overflow), ``HeapStore``
* ``handles``   the hot path: ``Counter.inc``, ``Gauge.inc/dec/set``, ``Histogram.record``
* ``histogram`` log-linear buckets, quantiles, Prometheus cumulative buckets
* ``snapshot``  summing areas into a ``Snapshot``; interval views
* ``block``     ``StatBlock`` (a component's declared stats) and ``sanitize``

Typical use::

    seg = Segment.create(base_id)            # main process, restart epoch 0
    area = seg.claim_area()                  # before forking a worker
    # in the worker:
    store = seg.store(area)
    cx_total = store.counter("cluster.backend.upstream_cx_total")
    cx_total.inc()
    # in the main process, after the worker exited:
    seg.release_area(area)
    snap = seg.snapshot()
"""

from __future__ import annotations

from stats_shm.areas import AreaInfo
from stats_shm.block import StatBlock, StatsScope, sanitize
from stats_shm.handles import Counter, Gauge, Histogram, NullCounter, NullGauge, NullHistogram
from stats_shm.histogram import (
    BUCKETS,
    PROMETHEUS_DEFAULT_BOUNDS,
    SUPPORTED_QUANTILES,
    HistogramData,
    bucket_bounds,
    bucket_index,
)
from stats_shm.kinds import Kind, Unit
from stats_shm.layout import StatsLayoutError, StatsSegmentError
from stats_shm.names import OVERFLOW, OVERFLOWED_COUNTERS, OVERFLOWED_GAUGES, OVERFLOWED_HISTOGRAMS
from stats_shm.segment import DEFAULT_DIRECTORY, Segment, Usage, segment_path
from stats_shm.snapshot import Snapshot
from stats_shm.store import Accept, HeapStore, StatsKindError, StatsStore

__all__ = [
    "BUCKETS",
    "DEFAULT_DIRECTORY",
    "OVERFLOW",
    "OVERFLOWED_COUNTERS",
    "OVERFLOWED_GAUGES",
    "OVERFLOWED_HISTOGRAMS",
    "PROMETHEUS_DEFAULT_BOUNDS",
    "SUPPORTED_QUANTILES",
    "Accept",
    "AreaInfo",
    "Counter",
    "Gauge",
    "HeapStore",
    "Histogram",
    "HistogramData",
    "Kind",
    "NullCounter",
    "NullGauge",
    "NullHistogram",
    "Segment",
    "Snapshot",
    "StatBlock",
    "StatsKindError",
    "StatsLayoutError",
    "StatsScope",
    "StatsSegmentError",
    "StatsStore",
    "Unit",
    "Usage",
    "bucket_bounds",
    "bucket_index",
    "sanitize",
    "segment_path",
]
