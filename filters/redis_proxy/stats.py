"""redis_proxy's stats, with Envoy's names (envoy-subset.md §5.2).

* ``redis.<stat_prefix>.``: the downstream block (``RedisProxyStats``) and ``splitter.*``.
* ``redis.<stat_prefix>.command.<cmd>.{total,success,error,latency}``: one ``CommandStats``
  per command, created the first time a worker sees the command (so an idle proxy does not
  spend ~200 histograms of the segment's budget), then reached through the command table
  with the command itself, never by name on the hot path. ``latency`` is in ms, or in µs
  with ``latency_in_micros``.
* ``cluster.<name>.``: the worker layer's ``ClusterStats`` (``upstream_rq_total/active``,
  ``upstream_rq_timeout``, the ``upstream_cx_*`` set) plus ``RedisClusterStats`` here:
  ``upstream_cx_protocol_error`` and the ``upstream_commands.upstream_rq_time`` histogram; with
  ``enable_command_stats`` also ``upstream_commands.<cmd>.{success,failure,total}`` and
  ``.latency`` (µs). ``upstream_rq_cancelled`` is not counted: a command of a client that went
  away cannot be taken back from a shared pipeline, so it completes (and counts) normally.

Success and error follow Envoy: any Redis reply, even an error reply, is a ``success`` of the
command; ``error`` is a reply the proxy made up (``upstream failure``, ``no upstream host``,
a wrong argument count, a multi-key command with a failed fragment).
"""

from __future__ import annotations

from typing import Final

from stats_shm.block import StatBlock, StatsScope
from stats_shm.handles import Counter, Histogram
from stats_shm.kinds import Unit

MS: Final = 1000.0
US: Final = 1_000_000.0


class RedisProxyStats(StatBlock):
    COUNTERS = (
        "downstream_cx_total",
        "downstream_cx_protocol_error",
        "downstream_cx_rx_bytes_total",
        "downstream_cx_tx_bytes_total",
        "downstream_cx_drain_close",
        "downstream_rq_total",
    )
    GAUGES = (
        "downstream_cx_active",
        "downstream_cx_rx_bytes_buffered",
        "downstream_cx_tx_bytes_buffered",
        "downstream_rq_active",
    )


class SplitterStats(StatBlock):
    COUNTERS = ("invalid_request", "unsupported_command")


class CommandStats:
    """``command.<cmd>.*`` of one command; ``scale`` turns seconds into the latency's unit."""

    __slots__ = ("error", "latency", "scale", "success", "total")

    def __init__(self, store: StatsScope, prefix: str, micros: bool) -> None:
        self.total: Counter = store.counter(prefix + "total")
        self.success: Counter = store.counter(prefix + "success")
        self.error: Counter = store.counter(prefix + "error")
        unit = Unit.MICROSECONDS if micros else Unit.MILLISECONDS
        self.latency: Histogram = store.histogram(prefix + "latency", unit)
        self.scale = US if micros else MS


class UpstreamCommandStats:
    """``cluster.<c>.upstream_commands.<cmd>.*`` (only with ``enable_command_stats``)."""

    __slots__ = ("failure", "latency", "success", "total")

    def __init__(self, store: StatsScope, prefix: str) -> None:
        self.total: Counter = store.counter(prefix + "total")
        self.success: Counter = store.counter(prefix + "success")
        self.failure: Counter = store.counter(prefix + "failure")
        self.latency: Histogram = store.histogram(prefix + "latency", Unit.MICROSECONDS)


class RedisClusterStats:
    """What redis_proxy adds under ``cluster.<name>.``."""

    __slots__ = ("_commands", "_prefix", "_store", "upstream_cx_protocol_error", "upstream_rq_time")

    def __init__(self, store: StatsScope, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        self.upstream_cx_protocol_error: Counter = store.counter(prefix + "upstream_cx_protocol_error")
        self.upstream_rq_time: Histogram = store.histogram(prefix + "upstream_commands.upstream_rq_time")
        self._commands: dict[str, UpstreamCommandStats] = {}

    def command(self, name: str) -> UpstreamCommandStats:
        """The per-command upstream stats, created on first use."""
        stats = self._commands.get(name)
        if stats is None:
            prefix = f"{self._prefix}upstream_commands.{name}."
            stats = self._commands[name] = UpstreamCommandStats(self._store, prefix)
        return stats

