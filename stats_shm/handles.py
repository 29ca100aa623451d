"""Stat handles: what the hot path holds and calls.

A handle is resolved once (``store.counter(name)``) and then only does indexed
arithmetic on a memoryview of *this process's own area*: no name formatting, no dict
lookup, no lock. Only the owning process writes its area, so ``view[i] += n`` (a load
and a store) never races with another writer; readers see either the old or the new
8-byte value.

"Used" flags (Envoy's ``usedonly``): each stat has a shared used byte, set on the first
event through a handle. To keep that branch off the hot path, a fresh handle's first
``inc``/``set``/``record`` sets the byte and then switches the handle's class to its
``_Live*`` subclass, whose methods do only the arithmetic. ``isinstance(h, Counter)``
stays true.

A batch of identical values (a sniffer counting one read of many messages) takes one call:
``counter.inc(n)``, ``gauge.inc(n)`` / ``dec(n)``, and ``histogram.record_n(value, n)``, which
is ``record(value)`` done ``n`` times (one bucket bump by ``n``, ``value * n`` on the sum).

Handles are not thread-safe (two threads of one process incrementing the same stat can
lose an update) and must not be carried across ``fork``: a worker opens its own store on
its own area after it starts. Counters must only be incremented by ``n >= 0``.
"""

from __future__ import annotations

from math import ceil as _ceil
from math import frexp as _frexp
from math import inf as _INF

from stats_shm.histogram import HIGH, INDEX_OFFSET, LOW, OVERFLOW_BUCKET, SUB_BUCKETS
from stats_shm.kinds import Unit

# record() inlines the bucket formula with literal 16 and 32.0 (faster than globals).
assert SUB_BUCKETS == 16
_LOW = LOW
_HIGH = HIGH
_UNDER = -INDEX_OFFSET  # from the formula's base to bucket 0
_OVER = OVERFLOW_BUCKET - INDEX_OFFSET


class Counter:
    """A monotonic u64 counter."""

    __slots__ = ("_i", "_u", "_used", "_v", "name")

    def __init__(self, name: str, view: memoryview, index: int, used: memoryview, used_index: int) -> None:
        self.name = name
        self._v = view
        self._i = index
        self._used = used
        self._u = used_index

    def inc(self, n: int = 1) -> None:
        """Add ``n`` (>= 0)."""
        self._used[self._u] = 1
        self.__class__ = _LiveCounter
        self._v[self._i] += n

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _LiveCounter(Counter):
    __slots__ = ()

    def inc(self, n: int = 1) -> None:
        self._v[self._i] += n


class Gauge:
    """An i64 gauge; the value read is the sum over live processes."""

    __slots__ = ("_i", "_u", "_used", "_v", "name")

    def __init__(self, name: str, view: memoryview, index: int, used: memoryview, used_index: int) -> None:
        self.name = name
        self._v = view
        self._i = index
        self._used = used
        self._u = used_index

    def _mark(self) -> None:
        self._used[self._u] = 1
        self.__class__ = _LiveGauge

    def inc(self, n: int = 1) -> None:
        self._mark()
        self._v[self._i] += n

    def dec(self, n: int = 1) -> None:
        self._mark()
        self._v[self._i] -= n

    def set(self, value: int) -> None:
        """Set this process's contribution to ``value``."""
        self._mark()
        self._v[self._i] = value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _LiveGauge(Gauge):
    __slots__ = ()

    def inc(self, n: int = 1) -> None:
        self._v[self._i] += n

    def dec(self, n: int = 1) -> None:
        self._v[self._i] -= n

    def set(self, value: int) -> None:
        self._v[self._i] = value


class Histogram:
    """A histogram: ``record(value)`` bumps one bucket and the sum (see histogram.py)."""

    __slots__ = ("_d", "_k", "_q", "_s", "_u", "_used", "name", "unit")

    def __init__(self, name: str, unit: Unit, q: memoryview, d: memoryview[float], buckets_cell: int,
                 sum_cell: int, used: memoryview, used_index: int) -> None:
        self.name = name
        self.unit = unit
        self._q = q
        self._d = d
        self._k = buckets_cell + INDEX_OFFSET  # so that bucket cell = _k + e*16 + ceil(32m)
        self._s = sum_cell
        self._used = used
        self._u = used_index

    def record(self, value: float) -> None:
        """Record one value in the stat's unit; NaN and infinities are ignored."""
        self._used[self._u] = 1
        self.__class__ = _LiveHistogram
        self.record(value)

    def record_n(self, value: float, n: int) -> None:
        """Record ``value`` ``n`` times (``n >= 0``): as ``n`` calls of ``record(value)``, in one."""
        if n > 0:
            self._used[self._u] = 1
            self.__class__ = _LiveHistogram
            self.record_n(value, n)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _LiveHistogram(Histogram):
    __slots__ = ()

    def record(self, value: float) -> None:
        if _LOW < value <= _HIGH:
            m, e = _frexp(value)
            self._q[self._k + e * 16 + _ceil(m * 32.0)] += 1
        elif -_INF < value <= _LOW:
            self._q[self._k + _UNDER] += 1
        elif _HIGH < value < _INF:
            self._q[self._k + _OVER] += 1
        else:  # NaN, +inf, -inf
            return
        self._d[self._s] += value

    def record_n(self, value: float, n: int) -> None:
        if _LOW < value <= _HIGH:
            m, e = _frexp(value)
            self._q[self._k + e * 16 + _ceil(m * 32.0)] += n
        elif -_INF < value <= _LOW:
            self._q[self._k + _UNDER] += n
        elif _HIGH < value < _INF:
            self._q[self._k + _OVER] += n
        else:  # NaN, +inf, -inf
            return
        self._d[self._s] += value * n


# ----- no-op handles for names rejected by the stats matcher --------------------------------


class NullCounter(Counter):
    """A counter that stores nothing (its name was rejected by the stats matcher)."""

    __slots__ = ()

    def __init__(self, name: str) -> None:
        self.name = name

    def inc(self, n: int = 1) -> None:
        pass


class NullGauge(Gauge):
    """A gauge that stores nothing (its name was rejected by the stats matcher)."""

    __slots__ = ()

    def __init__(self, name: str) -> None:
        self.name = name

    def inc(self, n: int = 1) -> None:
        pass

    def dec(self, n: int = 1) -> None:
        pass

    def set(self, value: int) -> None:
        pass


class NullHistogram(Histogram):
    """A histogram that stores nothing (its name was rejected by the stats matcher)."""

    __slots__ = ()

    def __init__(self, name: str, unit: Unit = Unit.MILLISECONDS) -> None:
        self.name = name
        self.unit = unit

    def record(self, value: float) -> None:
        pass

    def record_n(self, value: float, n: int) -> None:
        pass
