"""``/stats`` as text, Envoy's format (envoy-subset.md §8).

* one ``name: value`` line per counter and gauge, interleaved in name order;
* then one line per histogram, in name order::

      cluster.a.upstream_rq_time: P0(1,0.96875) P25(1,1) ... P100(50,50)

  each ``P<q>(interval,cumulative)``; ``nan`` for an interval without samples, and
  ``name: No recorded values`` for a histogram that never recorded anything.

Numbers print like Envoy's ``fmt`` ``{}`` (shortest round-trip, no trailing ``.0``),
after rounding estimates to 6 significant digits: quantiles come from buckets about 6%
wide, so more digits would only be noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from meshproxy.admin.stats_view import HistogramView, StatsSelection
from stats_shm import SUPPORTED_QUANTILES, HistogramData

# "P0", "P25", ..., "P99.9", "P100" (Envoy formats 100*q with {:g}).
QUANTILE_LABELS: Final = tuple(f"P{100 * q:g}" for q in SUPPORTED_QUANTILES)
NO_VALUES: Final = "No recorded values"


def format_double(value: float) -> str:
    """A quantile estimate as Envoy prints doubles: ``nan``, ``1``, ``2.5``, ``1e+16``."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    rounded = float(f"{value:.6g}")
    text = repr(rounded)
    return text[:-2] if text.endswith(".0") else text


def quantiles_or_nan(data: HistogramData | None) -> Sequence[float]:
    """The supported quantiles of ``data``, or NaNs when it holds no sample."""
    values = data.quantiles() if data is not None else None
    return values if values is not None else [math.nan] * len(SUPPORTED_QUANTILES)


def histogram_summary(view: HistogramView) -> str:
    """``P0(i,c) P25(i,c) ...`` or ``No recorded values``."""
    if view.cumulative.count == 0:
        return NO_VALUES
    cumulative = quantiles_or_nan(view.cumulative)
    interval = quantiles_or_nan(view.interval)
    return " ".join(f"{label}({format_double(i)},{format_double(c)})"
                    for label, i, c in zip(QUANTILE_LABELS, interval, cumulative, strict=True))


def render_text(selection: StatsSelection) -> str:
    """The whole ``/stats`` text body."""
    lines = [f"{name}: {value}\n" for name, value in selection.scalars()]
    lines.extend(f"{view.name}: {histogram_summary(view)}\n" for view in selection.histograms)
    return "".join(lines)
