"""``/stats?format=json``, Envoy's shape (envoy-subset.md §8)::

    {"stats": [{"name": "cluster.a.upstream_cx_total", "value": 3},
               ...,
               {"histograms": {
                   "supported_quantiles": [0, 25, ..., 100],
                   "computed_quantiles": [
                       {"name": "cluster.a.upstream_rq_time",
                        "values": [{"interval": null, "cumulative": 1}, ...]}]}}]}

Counters and gauges interleaved by name, then one object holding all histograms (only
when there is at least one to show). A quantile without samples is ``null`` (Envoy
renders NaN that way). Values are rounded like the text output.
"""

from __future__ import annotations

import json
import math

from meshproxy.admin.render_text import quantiles_or_nan
from meshproxy.admin.stats_view import StatsSelection
from stats_shm import SUPPORTED_QUANTILES


def _number(value: float) -> float | int | None:
    if math.isnan(value) or math.isinf(value):
        return None
    rounded = float(f"{value:.6g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded


SUPPORTED_PERCENTS: list[float | int | None] = [_number(100 * q) for q in SUPPORTED_QUANTILES]


def stats_json(selection: StatsSelection) -> dict[str, object]:
    """The ``/stats?format=json`` document as Python data."""
    stats: list[dict[str, object]] = [{"name": name, "value": value} for name, value in selection.scalars()]
    if selection.histograms:
        computed = []
        for view in selection.histograms:
            cumulative = quantiles_or_nan(view.cumulative)
            interval = quantiles_or_nan(view.interval)
            computed.append({
                "name": view.name,
                "values": [{"interval": _number(i), "cumulative": _number(c)}
                           for i, c in zip(interval, cumulative, strict=True)],
            })
        stats.append({"histograms": {"supported_quantiles": SUPPORTED_PERCENTS,
                                     "computed_quantiles": computed}})
    return {"stats": stats}


def render_json(selection: StatsSelection, pretty: bool = False) -> str:
    """The ``/stats?format=json`` body; compact unless ``pretty`` (Envoy's ``&pretty``)."""
    if pretty:
        return json.dumps(stats_json(selection), indent=2) + "\n"
    return json.dumps(stats_json(selection), separators=(",", ":"))
