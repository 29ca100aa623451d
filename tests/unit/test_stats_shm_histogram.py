"""stats_shm histograms: bucket scheme, quantiles, Prometheus buckets, interval views."""

from __future__ import annotations

import bisect
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stats_shm import (
    BUCKETS,
    PROMETHEUS_DEFAULT_BOUNDS,
    SUPPORTED_QUANTILES,
    HeapStore,
    HistogramData,
    bucket_bounds,
    bucket_index,
)

# The documented worst-case relative width of a bucket (1/16 of an octave).
BUCKET_ERROR = 1 / 16


def recorded(values: list[float]) -> HistogramData:
    store = HeapStore()
    h = store.histogram("h")
    for v in values:
        h.record(v)
    return store.snapshot().histograms["h"]


def exact_quantile(sorted_values: list[float], q: float) -> float:
    """The smallest value with at least q*n values at or below it (nearest rank)."""
    rank = max(math.ceil(q * len(sorted_values)), 1)
    return sorted_values[rank - 1]


@given(st.floats(min_value=2.0**-10, max_value=2.0**32, exclude_min=True))
def test_every_value_falls_in_its_bucket(value: float) -> None:
    i = bucket_index(value)
    lo, hi = bucket_bounds(i)
    assert lo < value <= hi
    assert (hi - lo) <= BUCKET_ERROR * lo * (1 + 1e-12)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300))
def test_handle_records_into_reference_bucket(value: float) -> None:
    h = recorded([value])
    assert h.count == 1
    assert h.buckets[bucket_index(value)] == 1
    assert h.sum == value


def test_bucket_edges_are_inclusive_upper_bounds() -> None:
    # le semantics: a value equal to a bound is counted at or below that bound.
    for b in (0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0):
        assert bucket_bounds(bucket_index(b))[1] == b
    h = recorded([1.0, 5.0, 5.0, 100.0])
    assert h.cumulative_buckets((0.5, 1.0, 5.0, 10.0, 100.0)) == [0, 1, 3, 3, 4]


def test_out_of_range_values() -> None:
    h = recorded([0.0, -3.0, 1e-9, 2.0**40, math.nan, math.inf, -math.inf])
    # NaN and +/-inf are dropped; zero, negatives and tiny values go to bucket 0.
    assert h.count == 4
    assert h.buckets[0] == 3
    assert h.buckets[BUCKETS - 1] == 1
    assert h.sum == -3.0 + 1e-9 + 2.0**40


def test_covers_microseconds_to_hours_in_ms() -> None:
    for value in (0.001, 0.0015, 3_600_000.0, 10 * 3_600_000.0):
        i = bucket_index(value)
        assert 0 < i < BUCKETS - 1
        lo, hi = bucket_bounds(i)
        assert lo < value <= hi


def test_empty_histogram() -> None:
    h = recorded([])
    assert h.count == 0 and h.sum == 0.0
    assert h.quantiles() is None
    assert h.cumulative_buckets() == [0] * len(PROMETHEUS_DEFAULT_BOUNDS)


@pytest.mark.parametrize("dist", ["uniform", "lognormal", "exponential"])
def test_quantiles_against_known_distribution(dist: str) -> None:
    rng = random.Random(dist)
    n = 100_000
    if dist == "uniform":
        values = [rng.uniform(0.5, 1000.0) for _ in range(n)]
    elif dist == "lognormal":
        values = [rng.lognormvariate(2.0, 1.5) for _ in range(n)]
    else:
        values = [0.01 + rng.expovariate(1 / 25.0) for _ in range(n)]
    h = recorded(values)
    values.sort()
    assert h.count == n
    assert h.sum == pytest.approx(math.fsum(values), rel=1e-9)
    estimates = h.quantiles()
    assert estimates is not None
    for q, est in zip(SUPPORTED_QUANTILES, estimates, strict=True):
        exact = exact_quantile(values, q)
        assert abs(est - exact) <= BUCKET_ERROR * exact, (q, est, exact)
    # P0 / P100 are the bounds of the extreme buckets: never inside the data range.
    assert estimates[0] <= values[0] and estimates[-1] >= values[-1]


def test_quantiles_single_value_and_custom_list() -> None:
    h = recorded([42.0] * 10)
    est = h.quantiles((0.0, 0.5, 1.0))
    assert est is not None
    lo, hi = bucket_bounds(bucket_index(42.0))
    assert est[0] == lo and est[2] == hi and lo < est[1] < hi


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prometheus_cumulative_buckets_within_bucket_error(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(4.0, 2.5) for _ in range(50_000)]
    values += [1.0, 5.0, 250.0, 1000.0] * 100  # exactly on bounds
    h = recorded(values)
    values.sort()
    estimates = h.cumulative_buckets()
    assert estimates == sorted(estimates)
    for bound, est in zip(PROMETHEUS_DEFAULT_BOUNDS, estimates, strict=True):
        exact = bisect.bisect_right(values, bound)
        lo, hi = bucket_bounds(bucket_index(bound))
        straddling = bisect.bisect_right(values, hi) - bisect.bisect_right(values, lo)
        if hi == bound:
            assert est == exact, bound
        else:
            assert abs(est - exact) <= straddling, (bound, est, exact)


def test_merge_and_interval() -> None:
    a = recorded([1.0, 2.0, 3.0])
    b = recorded([2.0, 100.0])
    merged = a + b
    assert merged.count == 5 and merged.sum == 108.0
    since = merged.interval(a)
    assert since.buckets == b.buckets and since.sum == b.sum
    assert since.interval(None) is since
    assert HistogramData.empty().count == 0


@pytest.mark.parametrize("value", [0.05, 1.0, 5.0, 168.0, 0.0, -3.0, 2.0**40, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("n", [1, 2, 16, 1000])
def test_record_n_is_n_records(value: float, n: int) -> None:
    store = HeapStore()
    h = store.histogram("h")
    h.record_n(value, n)
    h.record_n(value, n)  # the second call goes through the live handle
    once = store.snapshot().histograms.get("h")
    expected = recorded([value] * (2 * n))
    if math.isnan(value) or math.isinf(value):  # not recorded, as by record()
        assert once is None or once.count == 0
        return
    assert once is not None
    assert once.buckets == expected.buckets and once.count == 2 * n
    assert once.sum == pytest.approx(expected.sum)


def test_record_n_of_zero_records_nothing_and_leaves_the_stat_unused() -> None:
    store = HeapStore()
    store.histogram("h").record_n(7.0, 0)
    snap = store.snapshot()
    assert snap.histograms["h"].count == 0 and "h" not in snap.used  # usedonly: never recorded
    store.histogram("h").record_n(7.0, 3)
    snap = store.snapshot()
    assert snap.histograms["h"].count == 3 and "h" in snap.used
