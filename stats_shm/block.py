"""Stat blocks: a group of stat handles declared once by name, resolved once per process.

A block is built when a worker starts (or a filter's factory is built), never per
event; the data path then only calls ``block.some_counter.inc()``. Names follow
Envoy's (envoy-subset.md §4, §5, §7).
"""

from __future__ import annotations

from typing import Any, ClassVar


class StatBlock:
    """Declare ``COUNTERS``, ``GAUGES`` and ``HISTOGRAMS``; instances get one handle attribute per name."""

    COUNTERS: ClassVar[tuple[str, ...]] = ()
    GAUGES: ClassVar[tuple[str, ...]] = ()
    HISTOGRAMS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, store: Any, prefix: str) -> None:
        for name in self.COUNTERS:
            setattr(self, name, store.counter(prefix + name))
        for name in self.GAUGES:
            setattr(self, name, store.gauge(prefix + name))
        for name in self.HISTOGRAMS:
            setattr(self, name, store.histogram(prefix + name))

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - typo guard for mypy-less callers
        raise AttributeError(f"{type(self).__name__} declares no stat {name!r}")


def sanitize(segment: str) -> str:
    """Envoy's stat-name sanitizing of a dynamic segment: ':' -> '_', one leading/trailing '.' dropped."""
    segment = segment.replace(":", "_")
    if segment.startswith("."):
        segment = segment[1:]
    if segment.endswith("."):
        segment = segment[:-1]
    return segment
