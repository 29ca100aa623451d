"""Which stats a ``/stats`` request shows, and the admin's own view of them.

``StatsParams.parse`` reads Envoy's query parameters (``usedonly``, ``filter``,
``type``, ``format``, ``pretty``) with Envoy's error texts. ``select`` turns a ``Snapshot`` into a
sorted ``StatsSelection`` that every renderer (text, JSON, Prometheus, the ``meshproxy
stats`` CLI) consumes:

* names starting with ``_`` are internal (per-host ``_host.*`` stats feed ``/clusters``)
  and never shown;
* ``filter`` is a regex searched anywhere in the full stat name (RE2 partial match;
  Python's ``re`` is close enough for the patterns people type);
* ``usedonly`` keeps the names in ``Snapshot.used``.

``AdminStatsState`` is what one admin server remembers between requests:

* the histogram *interval*: Envoy shows, next to the cumulative quantiles, those of the
  last completed stats-flush period. The main process calls ``record_flush`` with the
  snapshot it flushed to the sinks; until the first flush the interval is empty (Envoy
  prints ``nan``).
* the ``/reset_counters`` baseline: afterwards counters are shown relative to their
  value at the reset (display only; sinks and the segment are untouched). A counter
  below its baseline (a cold restart replaced the segment) is shown whole.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from stats_shm import HistogramData, Snapshot


class StatsType(enum.Enum):
    ALL = "All"
    COUNTERS = "Counters"
    GAUGES = "Gauges"
    HISTOGRAMS = "Histograms"


class StatsFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"
    PROMETHEUS = "prometheus"


class ParamError(ValueError):
    """A bad query parameter; the message is the response body (Envoy's wording)."""


@dataclass(frozen=True, slots=True)
class StatsParams:
    used_only: bool = False
    filter: re.Pattern[str] | None = None
    type: StatsType = StatsType.ALL
    format: StatsFormat = StatsFormat.TEXT
    pretty: bool = False

    @classmethod
    def parse(cls, query: Mapping[str, str], default_format: StatsFormat = StatsFormat.TEXT) -> StatsParams:
        """Parse decoded query parameters; raises ``ParamError``."""
        pattern = None
        text = query.get("filter", "")
        if text:
            try:
                pattern = re.compile(text)
            except re.error as exc:
                raise ParamError(f"Invalid re2 regex: {exc}") from None
        type_ = StatsType.ALL
        if query.get("type"):
            try:
                type_ = StatsType(query["type"])
            except ValueError:
                raise ParamError("invalid &type= param") from None
        fmt = default_format
        if query.get("format"):
            try:
                fmt = StatsFormat(query["format"])
            except ValueError:
                raise ParamError("usage: /stats?format=(json|prometheus|text)\n\n") from None
        return cls("usedonly" in query, pattern, type_, fmt, "pretty" in query)


@dataclass(frozen=True, slots=True)
class HistogramView:
    """One histogram to show: cumulative data and the last interval's (None: no interval yet)."""

    name: str
    cumulative: HistogramData
    interval: HistogramData | None


@dataclass(frozen=True, slots=True)
class StatsSelection:
    """Stats to render, each list sorted by name."""

    counters: list[tuple[str, int]]
    gauges: list[tuple[str, int]]
    histograms: list[HistogramView]

    def scalars(self) -> list[tuple[str, int]]:
        """Counters and gauges interleaved by name (the text and JSON order)."""
        return sorted(self.counters + self.gauges)


def is_internal(name: str) -> bool:
    """Names starting with ``_`` feed other endpoints and are never listed as stats."""
    return name.startswith("_")


def select(snapshot: Snapshot, params: StatsParams, *, intervals: Mapping[str, HistogramData] | None = None,
           baseline: Mapping[str, int] | None = None) -> StatsSelection:
    """The stats of ``snapshot`` that ``params`` asks for (see the module docstring)."""
    pattern, used = params.filter, snapshot.used

    def shown(name: str) -> bool:
        if is_internal(name):
            return False
        if params.used_only and name not in used:
            return False
        return pattern is None or pattern.search(name) is not None

    want = params.type
    counters: list[tuple[str, int]] = []
    gauges: list[tuple[str, int]] = []
    histograms: list[HistogramView] = []
    if want in (StatsType.ALL, StatsType.COUNTERS):
        base = baseline or {}
        for name, value in snapshot.counters.items():
            if shown(name):
                b = base.get(name, 0)
                counters.append((name, value - b if value >= b else value))
        counters.sort()
    if want in (StatsType.ALL, StatsType.GAUGES):
        gauges = sorted((n, v) for n, v in snapshot.gauges.items() if shown(n))
    if want in (StatsType.ALL, StatsType.HISTOGRAMS):
        ivals = intervals or {}
        for name in sorted(snapshot.histograms):
            if shown(name):
                histograms.append(HistogramView(name, snapshot.histograms[name], ivals.get(name)))
    return StatsSelection(counters, gauges, histograms)


class AdminStatsState:
    """Flush intervals and the ``/reset_counters`` baseline of one admin server."""

    def __init__(self) -> None:
        self._last_flush: Snapshot | None = None
        self._intervals: dict[str, HistogramData] = {}
        self._baseline: dict[str, int] = {}

    def record_flush(self, snapshot: Snapshot) -> None:
        """Called at each stats flush: the interval becomes what was recorded since the last one."""
        previous = self._last_flush.histograms if self._last_flush is not None else {}
        self._intervals = {name: h.interval(previous.get(name)) for name, h in snapshot.histograms.items()}
        self._last_flush = snapshot

    def reset_counters(self, snapshot: Snapshot) -> None:
        """Show counters relative to their current values from now on."""
        self._baseline = dict(snapshot.counters)

    def select(self, snapshot: Snapshot, params: StatsParams) -> StatsSelection:
        return select(snapshot, params, intervals=self._intervals, baseline=self._baseline)
