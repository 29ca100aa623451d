"""Stores: where code gets its handles, by name, once.

``StatsStore`` turns a name into a handle writing one area. The name goes through, in
order:

1. the store's own cache (a name is resolved once per store; repeated lookups return the
   same handle object),
2. the stats matcher ``accept(name)``: a rejected name gets a no-op handle and is not
   stored at all (Envoy's ``stats_matcher``),
3. the name source (the segment's shared name table, or a local one for ``HeapStore``),
   which returns the name's slot, allocating it if new. When a budget is full the name
   is refused: ``stats.overflow`` is incremented (once per store and name) and the
   handle writes to the shared ``stats.overflowed_{counters,gauges,histograms}`` stat.
   Nothing raises on the hot path or at handle creation because of budgets.

Asking for an existing name with another kind raises ``StatsKindError``: that is a bug
in the caller, not a runtime condition.

``HeapStore`` has the same handle API in plain process memory, for unit tests of
filters and for running without shared memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from stats_shm.handles import Counter, Gauge, Histogram, NullCounter, NullGauge, NullHistogram
from stats_shm.histogram import BUCKETS
from stats_shm.kinds import Kind, Unit
from stats_shm.names import (
    OVERFLOW,
    OVERFLOWED_COUNTERS,
    OVERFLOWED_GAUGES,
    OVERFLOWED_HISTOGRAMS,
    RESERVED_HISTOGRAMS,
    RESERVED_SCALARS,
    Entry,
    LocalNames,
    used_names,
)
from stats_shm.snapshot import Snapshot, build_snapshot, sum_areas

Accept = Callable[[str], bool]
Handle = Counter | Gauge | Histogram


class StatsKindError(TypeError):
    """A stat name was asked for as another kind than it was created with."""


class NameSource(Protocol):
    def resolve(self, name: str, kind: Kind, unit: Unit) -> Entry | None:
        """The slot of ``name`` (allocated if new), or None when the budget is full."""
        ...


class AreaViews:
    """Memoryviews over one area and the used flags, with the offsets handles need."""

    __slots__ = ("base", "d", "hist_cap", "i64", "q", "scalar_cap", "used", "used_base")

    def __init__(self, q: memoryview, i64: memoryview, d: memoryview[float], used: memoryview, base: int,
                 used_base: int, scalar_cap: int, hist_cap: int) -> None:
        self.q = q  # u64 cells (counters, bucket counts)
        self.i64 = i64  # i64 cells (gauges), same bytes
        self.d = d  # f64 cells (histogram sums), same bytes
        self.used = used  # bytes; used flags at used_base + slot
        self.base = base  # first cell of the area
        self.used_base = used_base
        self.scalar_cap = scalar_cap
        self.hist_cap = hist_cap

    def handle(self, entry: Entry) -> Handle:
        base, slot = self.base, entry.slot
        if entry.kind is Kind.COUNTER:
            return Counter(entry.name, self.q, base + slot, self.used, self.used_base + slot)
        if entry.kind is Kind.GAUGE:
            return Gauge(entry.name, self.i64, base + slot, self.used, self.used_base + slot)
        sums = base + self.scalar_cap
        buckets = sums + self.hist_cap + slot * BUCKETS
        return Histogram(entry.name, entry.unit, self.q, self.d, buckets, sums + slot, self.used,
                         self.used_base + self.scalar_cap + slot)


class StatsStore:
    """Hands out handles that write one area (see the module docstring)."""

    def __init__(self, source: NameSource, views: AreaViews, accept: Accept | None = None) -> None:
        self._source = source
        self._views = views
        self._accept = accept
        self._handles: dict[str, Handle] = {}
        overflow = self._reserved(OVERFLOW, Kind.COUNTER)
        assert isinstance(overflow, Counter)
        self._overflow = overflow
        self._sinks: dict[Kind, Handle] = {
            Kind.COUNTER: self._reserved(OVERFLOWED_COUNTERS, Kind.COUNTER),
            Kind.GAUGE: self._reserved(OVERFLOWED_GAUGES, Kind.GAUGE),
            Kind.HISTOGRAM: self._reserved(OVERFLOWED_HISTOGRAMS, Kind.HISTOGRAM),
        }

    def _reserved(self, name: str, kind: Kind) -> Handle:
        entry = self._source.resolve(name, kind, Unit.UNSPECIFIED)
        if entry is None or entry.kind is not kind:
            raise AssertionError(f"reserved stat {name} missing from the name table")
        handle = self._views.handle(entry)
        self._handles[name] = handle
        return handle

    def counter(self, name: str) -> Counter:
        """The counter ``name`` (created on first use)."""
        handle = self._handles.get(name) or self._resolve(name, Kind.COUNTER, Unit.UNSPECIFIED)
        if not isinstance(handle, Counter):
            raise StatsKindError(f"stat {name!r} is not a counter")
        return handle

    def gauge(self, name: str) -> Gauge:
        """The gauge ``name`` (created on first use)."""
        handle = self._handles.get(name) or self._resolve(name, Kind.GAUGE, Unit.UNSPECIFIED)
        if not isinstance(handle, Gauge):
            raise StatsKindError(f"stat {name!r} is not a gauge")
        return handle

    def histogram(self, name: str, unit: Unit = Unit.MILLISECONDS) -> Histogram:
        """The histogram ``name`` (created on first use; the first creator's unit wins)."""
        handle = self._handles.get(name) or self._resolve(name, Kind.HISTOGRAM, unit)
        if not isinstance(handle, Histogram):
            raise StatsKindError(f"stat {name!r} is not a histogram")
        return handle

    def _resolve(self, name: str, kind: Kind, unit: Unit) -> Handle:
        handle: Handle
        if self._accept is not None and not self._accept(name):
            handle = _NULL[kind](name)
        else:
            entry = self._source.resolve(name, kind, unit)
            if entry is None:
                self._overflow.inc()
                handle = self._sinks[kind]
            elif entry.kind is not kind:
                raise StatsKindError(
                    f"stat {name!r} is a {entry.kind.name.lower()}, not a {kind.name.lower()}"
                )
            else:
                handle = self._views.handle(entry)
        self._handles[name] = handle
        return handle


_NULL: dict[Kind, Callable[[str], Handle]] = {
    Kind.COUNTER: NullCounter,
    Kind.GAUGE: NullGauge,
    Kind.HISTOGRAM: NullHistogram,
}


class HeapStore(StatsStore):
    """A store in plain process memory with the same handles, slot budgets and snapshot.

    For unit tests of code that takes a store, and as a fallback when no segment can be
    created. Nothing is shared with other processes.
    """

    def __init__(self, *, slot_budget: int = 4096, histogram_budget: int = 256,
                 accept: Accept | None = None) -> None:
        scalar_cap = slot_budget + RESERVED_SCALARS
        hist_cap = histogram_budget + RESERVED_HISTOGRAMS
        self._names = LocalNames(scalar_cap, hist_cap)
        cells = scalar_cap + hist_cap + hist_cap * BUCKETS
        self._memory = bytearray(cells * 8)
        self._used_flags = bytearray(scalar_cap + hist_cap)
        raw = memoryview(self._memory)
        views = AreaViews(raw.cast("Q"), raw.cast("q"), raw.cast("d"), memoryview(self._used_flags), 0, 0,
                          scalar_cap, hist_cap)
        super().__init__(self._names, views, accept)

    def snapshot(self) -> Snapshot:
        """Current values of every stat of this store."""
        index, views = self._names.index, self._views
        totals = sum_areas(views.q, views.d, (0,), len(index.scalars), len(index.hists), views.scalar_cap,
                           views.hist_cap)
        return build_snapshot(index, totals, used_names(index, views.used, views.scalar_cap))
