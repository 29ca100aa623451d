"""Stat blocks: a component's stats declared once, resolved once into handles.

Envoy declares a component's stats as one block (``ALL_TCP_PROXY_STATS(COUNTER, GAUGE,
HISTOGRAM)``) and creates them all when the component is configured; the hot path only
calls ``inc()`` on a member. The Python equivalent::

    class TcpProxyStats(StatBlock):
        COUNTERS = ("downstream_cx_total", "idle_timeout")
        GAUGES = ("upstream_flush_active",)
        HISTOGRAMS = ("upstream_cx_length_ms",)

    stats = TcpProxyStats(store, f"tcp.{stat_prefix}.")
    stats.downstream_cx_total.inc()

Each declared name becomes an attribute holding the handle for ``prefix + name``.
Histograms are in milliseconds unless listed in ``HISTOGRAM_UNITS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from stats_shm.handles import Counter, Gauge, Histogram
from stats_shm.kinds import Unit


class StatsScope(Protocol):
    """What a block needs from a store (``StatsStore`` and ``HeapStore`` provide it)."""

    def counter(self, name: str) -> Counter: ...

    def gauge(self, name: str) -> Gauge: ...

    def histogram(self, name: str, unit: Unit = ...) -> Histogram: ...


class StatBlock:
    """Base class of a declared block of stats (see the module docstring)."""

    COUNTERS: ClassVar[tuple[str, ...]] = ()
    GAUGES: ClassVar[tuple[str, ...]] = ()
    HISTOGRAMS: ClassVar[tuple[str, ...]] = ()
    HISTOGRAM_UNITS: ClassVar[Mapping[str, Unit]] = {}

    def __init__(self, store: StatsScope, prefix: str) -> None:
        self.prefix = prefix
        for name in self.COUNTERS:
            setattr(self, name, store.counter(prefix + name))
        for name in self.GAUGES:
            setattr(self, name, store.gauge(prefix + name))
        units = self.HISTOGRAM_UNITS
        for name in self.HISTOGRAMS:
            unit = units.get(name)
            # The unit is passed only when declared (stores without units work too).
            handle = store.histogram(prefix + name) if unit is None else store.histogram(prefix + name, unit)
            setattr(self, name, handle)

    if TYPE_CHECKING:
        # Declared members are set in __init__; this tells type checkers that
        # `block.some_stat.inc()` is fine without annotating every member.
        def __getattr__(self, name: str) -> Any: ...


def sanitize(name: str) -> str:
    """Envoy's ``Stats::Utility::sanitizeStatsName``: drop one leading and one trailing
    dot, and replace ``://``, ``:/``, ``:`` and NUL with ``_`` (``0.0.0.0:80`` ->
    ``0.0.0.0_80``)."""
    if name.endswith("."):
        name = name[:-1]
    if name.startswith("."):
        name = name[1:]
    return name.replace("://", "_").replace(":/", "_").replace(":", "_").replace("\0", "_")
