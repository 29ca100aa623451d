"""connection_limit: a host-wide cap on concurrent connections through one filter config.

Envoy's ``ConnectionLimitFilter``: a new connection is counted; if the count was already
at ``max_connections``, ``limited_connections``++ and the connection is closed with no
flush, at once or after ``delay`` (holding a rejected client for a while slows down a
reconnect storm; its bytes are held, never passed on). As in Envoy, a rejected connection
stays in the count until it closes, so ``active_connections`` is every open connection
the filter has seen.

The count is shared by every worker process (shared_bucket.py): N workers admit
``max_connections`` in all, not per worker. A worker that dies with connections open
has its share folded out once the total reaches the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from filters.api import ConnectionEvent, FilterStatus, NetworkFilter, WorkerContext
from filters.connection_limit.config import ConnectionLimitConfig
from filters.connection_limit.stats import ConnectionLimitStats
from filters.local_ratelimit.shared_bucket import SharedConnectionCounter, region_of

_CONTINUE = FilterStatus.CONTINUE
_STOP = FilterStatus.STOP_ITERATION


class ConnectionLimitFilter(NetworkFilter):
    inspects_data = False

    def __init__(self, config: ConnectionLimitConfig, counter: SharedConnectionCounter,
                 stats: ConnectionLimitStats) -> None:
        self.config = config
        self.counter = counter
        self.stats = stats
        self.counted = False
        self.delay_timer: asyncio.TimerHandle | None = None

    def on_new_connection(self) -> FilterStatus:
        self.stats.active_connections.inc()
        self.counted = True
        if self.counter.acquire(self.config.max_connections):
            return _CONTINUE
        # Over the limit; still counted until it closes, as Envoy does.
        self.stats.limited_connections.inc()
        delay = self.config.delay
        if delay is None:
            self.callbacks.close(flush=False)
        else:
            self.delay_timer = self.callbacks.loop.call_later(delay, self._close)
        return _STOP

    def _close(self) -> None:
        self.delay_timer = None
        self.callbacks.close(flush=False)

    def on_event(self, event: ConnectionEvent) -> None:
        if self.delay_timer is not None:
            self.delay_timer.cancel()
            self.delay_timer = None
        if self.counted:
            self.counted = False
            self.counter.release()
            self.stats.active_connections.dec()


class _Disabled(NetworkFilter):
    inspects_data = False


def build(config: ConnectionLimitConfig, worker: WorkerContext) -> Callable[[], NetworkFilter]:
    """Bind the stat block and this worker's handle on the host-wide count; once per worker."""
    stats = ConnectionLimitStats(worker.stats, f"connection_limit.{config.stat_prefix}.")
    if not config.enabled:
        return _Disabled
    counter = region_of(worker).connection_counter(config.counter_key)

    def make() -> NetworkFilter:
        return ConnectionLimitFilter(config, counter, stats)

    return make
