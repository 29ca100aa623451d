"""tcp_proxy: relay bytes between downstream and one upstream host, as Envoy does.

Per connection (envoy-subset.md §5.1):
* The upstream connect starts on accept; the chain is held (STOP_ITERATION) until it
  is connected, so early downstream bytes are buffered by the connection and counted
  in ``early_data_received_count_total``.
* A failed or timed-out connect tries another host, up to ``max_connect_attempts``;
  then ``upstream_cx_connect_attempts_exceeded``++ and the downstream is closed at once.
* Half-close in both directions; the connection ends when both sides have ended.
* Flow control: when one side's pending output passes its buffer limit, reading
  from the other side stops, and resumes below the low watermark (half).
* ``idle_timeout``: no bytes either way for that long closes both sides. The timer
  is not re-armed per chunk: activity only stamps a time, and the timer re-arms
  itself for the remainder when it fires early.
* Relay: once connected, if no filter before this one reads the bytes, the connection
  joins both sockets in the event loop (``workers/relay.py``) and this filter sees no
  more chunks: byte counters then come from the kernel's per-socket counts (every second,
  at each half-close and at close), and idle time from the sockets' last receive.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from filters.api import ConnectHandle, ConnectionEvent, FilterStatus, NetworkFilter, Upstream, WorkerContext
from filters.tcp_proxy.config import TcpProxyConfig
from filters.tcp_proxy.stats import TcpProxyStats

if TYPE_CHECKING:
    import asyncio

_CONTINUE = FilterStatus.CONTINUE
_STOP = FilterStatus.STOP_ITERATION


class ClusterPicker:
    """Chooses the cluster per connection: fixed, or weighted at random."""

    def __init__(self, config: TcpProxyConfig, clusters: Any) -> None:
        if config.cluster is not None:
            self.fixed: Any | None = clusters.get(config.cluster)
            self.choices: list[Any] = []
            self.weights: list[int] = []
        else:
            self.fixed = None
            self.choices = [clusters.get(w.name) for w in config.weighted_clusters]
            self.weights = [w.weight for w in config.weighted_clusters]

    def pick(self) -> Any:
        if self.fixed is not None:
            return self.fixed
        return random.choices(self.choices, self.weights)[0]


class TcpProxyFilter(NetworkFilter):
    """The terminal filter of a TCP listener."""

    def __init__(self, config: TcpProxyConfig, stats: TcpProxyStats, picker: ClusterPicker,
                 worker: WorkerContext) -> None:
        self.config = config
        self.stats = stats
        self.picker = picker
        self.worker = worker
        self.cluster: Any = None
        self.host: Any = None
        self.upstream: Upstream | None = None
        self.attempt: ConnectHandle | None = None
        self.attempts = 0
        self.downstream_closed = False
        self.upstream_eof = False
        self.downstream_eof = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.duration_timer: asyncio.TimerHandle | None = None
        self.last_activity = 0.0
        self.relay: Any = None  # set once both sockets are joined (workers/relay.py)
        self.down_rx = 0  # bytes counted before relaying: the relay's starting point
        self.up_rx = 0

    # ----- downstream side ----------------------------------------------------------------

    def on_new_connection(self) -> FilterStatus:
        self.stats.downstream_cx_total.inc()
        self.cluster = self.picker.pick()
        self._connect()
        cfg = self.config
        if cfg.max_downstream_connection_duration is not None:
            self.duration_timer = self.callbacks.loop.call_later(
                cfg.max_downstream_connection_duration, self._on_max_duration
            )
        return _STOP

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        upstream = self.upstream
        if upstream is None:  # cannot happen: the chain is held until connected
            return _STOP
        if data:
            self.down_rx += len(data)
            self.stats.downstream_cx_rx_bytes_total.inc(len(data))
            self.cluster.stats.upstream_cx_tx_bytes_total.inc(len(data))  # type: ignore[union-attr]
            upstream.write(data)
        if end_stream:
            self.downstream_eof = True
            if self.relay is not None:
                self.relay.sample()
            upstream.write_eof()
            if self.upstream_eof:
                self.callbacks.close()
        self.last_activity = time.monotonic()
        return _STOP

    def on_event(self, event: ConnectionEvent) -> None:
        self.downstream_closed = True
        self._stop_relay()
        self._cancel_timers()
        if self.attempt is not None:
            self.attempt.cancel()
            self.attempt = None
        if self.upstream is not None:
            # Pending bytes towards upstream still flush after downstream went away, or when
            # both directions ended normally; any other local close (timeout, drain) aborts.
            ended = self.downstream_eof and self.upstream_eof
            self.upstream.close(flush=ended or event is ConnectionEvent.REMOTE_CLOSE)

    def on_above_write_buffer_high_watermark(self) -> None:
        self.stats.downstream_flow_control_paused_reading_total.inc()
        if self.upstream is not None:
            self.upstream.pause_reading()

    def on_below_write_buffer_low_watermark(self) -> None:
        self.stats.downstream_flow_control_resumed_reading_total.inc()
        if self.upstream is not None:
            self.upstream.resume_reading()

    # ----- upstream side ------------------------------------------------------------------

    def on_upstream_data(self, data: bytes) -> None:
        self.up_rx += len(data)
        self.stats.downstream_cx_tx_bytes_total.inc(len(data))
        self.cluster.stats.upstream_cx_rx_bytes_total.inc(len(data))  # type: ignore[union-attr]
        self.last_activity = time.monotonic()
        self.callbacks.write(data)

    def on_upstream_eof(self) -> None:
        self.upstream_eof = True
        if self.relay is not None:
            self.relay.sample()
        self.callbacks.write(b"", end_stream=True)

    def on_upstream_closed(self, exc: Exception | None) -> None:
        self._stop_relay()
        self.upstream = None
        self._request_ended()
        if not self.downstream_closed:
            self.callbacks.close(flush=True)

    def on_upstream_above_high_watermark(self) -> None:
        self.callbacks.read_disable(True)

    def on_upstream_below_low_watermark(self) -> None:
        self.callbacks.read_disable(False)

    # ----- connecting -----------------------------------------------------------------------

    def _connect(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.inc()
            self.callbacks.close(flush=False)
            return
        self.attempts += 1
        self.host = host
        self.attempt = self.worker.connect_upstream(cluster, host, self, self._on_connect_done)

    def _on_connect_done(self, upstream: Upstream | None, failure: str) -> None:
        self.attempt = None
        if self.downstream_closed:
            if upstream is not None:
                upstream.close(flush=False)
            return
        if upstream is None:
            if self.attempts < self.config.max_connect_attempts:
                self._connect()
                return
            assert self.cluster is not None
            self.cluster.stats.upstream_cx_connect_attempts_exceeded.inc()
            self.callbacks.close(flush=False)
            return
        self.upstream = upstream
        self._request_started()
        self.last_activity = time.monotonic()
        if self.config.idle_timeout is not None:
            self.idle_timer = self.callbacks.loop.call_later(self.config.idle_timeout, self._on_idle_timer)
        self.callbacks.continue_reading()
        if not self.downstream_closed and self.upstream is not None:
            self.relay = self.callbacks.start_relay(self, upstream, self.down_rx, self.up_rx,
                                                    self._on_relayed)

    # ----- relay ----------------------------------------------------------------------------

    def _on_relayed(self, down_rx: int, up_rx: int) -> None:
        """Bytes the joined sockets carried since the last sample (see workers/relay.py)."""
        cluster_stats = self.cluster.stats
        if down_rx:
            self.stats.downstream_cx_rx_bytes_total.inc(down_rx)
            cluster_stats.upstream_cx_tx_bytes_total.inc(down_rx)
        if up_rx:
            self.stats.downstream_cx_tx_bytes_total.inc(up_rx)
            cluster_stats.upstream_cx_rx_bytes_total.inc(up_rx)

    def _stop_relay(self) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.stop()

    def _request_started(self) -> None:
        """An upstream connection is one active request to its host (LEAST_REQUEST, /clusters)."""
        host = self.host
        host.rq_active += 1
        host.stats.rq_total.inc()
        host.stats.rq_active.inc()
        self.cluster.stats.upstream_rq_total.inc()
        self.cluster.stats.upstream_rq_active.inc()

    def _request_ended(self) -> None:
        host = self.host
        host.rq_active -= 1
        host.stats.rq_active.dec()
        host.stats.rq_success.inc()
        self.cluster.stats.upstream_rq_active.dec()

    # ----- timers ---------------------------------------------------------------------------

    def _on_idle_timer(self) -> None:
        timeout = self.config.idle_timeout
        assert timeout is not None
        idle_for = time.monotonic() - self.last_activity
        if self.relay is not None:
            idle_for = min(idle_for, self.relay.quiet_seconds())
        if idle_for < timeout:
            self.idle_timer = self.callbacks.loop.call_later(timeout - idle_for, self._on_idle_timer)
            return
        self.idle_timer = None
        self.stats.idle_timeout.inc()
        self.callbacks.close(flush=True)

    def _on_max_duration(self) -> None:
        self.duration_timer = None
        self.stats.max_downstream_connection_duration.inc()
        self.callbacks.close(flush=False)

    def _cancel_timers(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.duration_timer is not None:
            self.duration_timer.cancel()
            self.duration_timer = None


def build(config: TcpProxyConfig, worker: WorkerContext) -> Callable[[], NetworkFilter]:
    """Bind stats and clusters once per worker; return the per-connection factory."""
    stats = TcpProxyStats(worker.stats, f"tcp.{config.stat_prefix}.")
    picker = ClusterPicker(config, worker.clusters)

    def make() -> NetworkFilter:
        return TcpProxyFilter(config, stats, picker, worker)

    return make
