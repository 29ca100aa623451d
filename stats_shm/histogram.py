"""Histogram buckets: a fixed log-linear scheme, mergeable by adding counts.

Every histogram, in every process, uses the same buckets, so merging areas (or
subtracting the previous flush for the interval view) is element-wise arithmetic on
bucket counts; nothing about the data is kept per sample.

Scheme (values are floats in the stat's unit, milliseconds by default):

* Each binary octave ``(2^k, 2^(k+1)]`` for ``MIN_EXP <= k < MAX_EXP`` is split into
  ``SUB_BUCKETS`` = 16 equal-width buckets, so a bucket is at most 1/16 = 6.25% of its
  lower bound wide. An estimate interpolated inside a bucket is within 6.25% of the true
  value (worst case, at the bottom of an octave; typically far less), and the bucket
  midpoint is within 3.1%.
* ``2^MIN_EXP`` = 2^-10 ≈ 0.98e-3 and ``2^MAX_EXP`` = 2^32 ≈ 4.3e9: in ms that is 1 µs to
  49 days; in µs 1 ns to 71 minutes; in bytes up to 4 GiB. 42 octaves, 672 fine buckets.
* Bucket 0 holds values ``<= 2^MIN_EXP`` (including 0 and negatives); the last bucket
  holds values ``> 2^MAX_EXP``. NaN and +-infinity are not recorded (they would poison
  the sum).
* Buckets are closed above, ``(lo, hi]``, like Prometheus ``le`` buckets: a value equal to
  a bound counts at or below it. Envoy's default bounds 0.5, 1, 5, 10, 25, 50 and 100
  are bucket edges, so their cumulative counts are exact; the others are interpolated
  inside one bucket.

Index of a value ``v`` with ``m, e = frexp(v)`` (``v = m * 2^e``, ``0.5 <= m < 1``)::

    index = e * 16 + ceil(32 * m) + INDEX_OFFSET

which is one ``frexp``, one ``ceil`` and integer arithmetic: the handle's ``record``
inlines this formula; ``bucket_index`` is the reference version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from stats_shm.kinds import Unit

SUB_BUCKETS: Final = 16
MIN_EXP: Final = -10
MAX_EXP: Final = 32
FINE_BUCKETS: Final = (MAX_EXP - MIN_EXP) * SUB_BUCKETS
BUCKETS: Final = FINE_BUCKETS + 2  # underflow + fine + overflow
LOW: Final = 2.0**MIN_EXP
HIGH: Final = 2.0**MAX_EXP
OVERFLOW_BUCKET: Final = BUCKETS - 1
# index = e*16 + ceil(32m) + INDEX_OFFSET, derived in the module docstring.
INDEX_OFFSET: Final = -2 * SUB_BUCKETS - SUB_BUCKETS * MIN_EXP

SUPPORTED_QUANTILES: Final = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)
PROMETHEUS_DEFAULT_BOUNDS: Final = (
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
)


def bucket_index(value: float) -> int:
    """The bucket ``value`` falls in, or -1 for NaN and +-infinity (not recorded)."""
    if LOW < value <= HIGH:
        m, e = math.frexp(value)
        return e * SUB_BUCKETS + math.ceil(2 * SUB_BUCKETS * m) + INDEX_OFFSET
    if -math.inf < value <= LOW:
        return 0
    if HIGH < value < math.inf:
        return OVERFLOW_BUCKET
    return -1


def _bounds(i: int) -> tuple[float, float]:
    if i == 0:
        return (0.0, LOW)
    if i == OVERFLOW_BUCKET:
        return (HIGH, HIGH)
    octave, sub = divmod(i - 1, SUB_BUCKETS)
    base = 2.0 ** (MIN_EXP + octave)
    return (base * (1 + sub / SUB_BUCKETS), base * (1 + (sub + 1) / SUB_BUCKETS))


_BOUNDS: Final = tuple(_bounds(i) for i in range(BUCKETS))


def bucket_bounds(i: int) -> tuple[float, float]:
    """``(lo, hi]`` of bucket ``i``; bucket 0 is reported as ``(0, LOW]`` and the
    overflow bucket as ``(HIGH, HIGH]`` (its values are only known to exceed HIGH)."""
    return _BOUNDS[i]


@dataclass(frozen=True, slots=True)
class HistogramData:
    """A histogram read from the segment: bucket counts and the sum of the values.

    ``count`` is the sum of the bucket counts (each recorded value bumps exactly one
    bucket, so it is exact and always consistent with the buckets).
    """

    buckets: tuple[int, ...]
    sum: float
    unit: Unit = Unit.MILLISECONDS
    count: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", sum(self.buckets))

    @classmethod
    def empty(cls, unit: Unit = Unit.MILLISECONDS) -> HistogramData:
        return cls((0,) * BUCKETS, 0.0, unit)

    def quantiles(self, qs: Sequence[float] = SUPPORTED_QUANTILES) -> list[float] | None:
        """Estimated values at the quantiles ``qs`` (fractions in [0, 1]), or None if empty.

        Linear interpolation inside the bucket holding the rank ``q * count``; q=0 gives the
        lower bound of the lowest non-empty bucket and q=1 the upper bound of the highest.
        """
        total = self.count
        if total == 0:
            return None
        nonzero = [(i, c) for i, c in enumerate(self.buckets) if c]
        out: list[float] = []
        for q in qs:
            rank = min(max(q, 0.0), 1.0) * total
            cum = 0
            value = _BOUNDS[nonzero[-1][0]][1]
            for i, c in nonzero:
                if cum + c >= rank:
                    lo, hi = _BOUNDS[i]
                    value = lo + (hi - lo) * ((rank - cum) / c)
                    break
                cum += c
            out.append(value)
        return out

    def cumulative_buckets(self, bounds: Sequence[float] = PROMETHEUS_DEFAULT_BOUNDS) -> list[int]:
        """Estimated number of values ``<= b`` for each bound ``b`` (Prometheus ``le``).

        Exact when ``b`` is a bucket edge; otherwise the bucket holding ``b`` is split
        linearly, so the error is at most that one bucket's count. Non-decreasing for
        increasing bounds. The ``+Inf`` bucket is ``count``.
        """
        cum = [0] * (BUCKETS + 1)  # cum[i] = values in buckets < i
        running = 0
        for i, c in enumerate(self.buckets):
            cum[i] = running
            running += c
        cum[BUCKETS] = running
        out: list[int] = []
        last = 0
        for b in bounds:
            i = bucket_index(b)
            if i < 0:  # +inf (or NaN) as a bound: everything
                est = running
            else:
                lo, hi = _BOUNDS[i]
                c = self.buckets[i]
                # A bound on a bucket edge (or in bucket 0) counts the whole bucket.
                inside = c if b >= hi or i == 0 else round(c * (b - lo) / (hi - lo))
                est = cum[i] + inside
            last = max(last, est)
            out.append(last)
        return out

    def __add__(self, other: HistogramData) -> HistogramData:
        return HistogramData(tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
                             self.sum + other.sum, self.unit)

    def interval(self, previous: HistogramData | None) -> HistogramData:
        """What was recorded since ``previous`` (an earlier read of the same histogram)."""
        if previous is None:
            return self
        return HistogramData(
            tuple(max(a - b, 0) for a, b in zip(self.buckets, previous.buckets, strict=True)),
            self.sum - previous.sum,
            self.unit,
        )
