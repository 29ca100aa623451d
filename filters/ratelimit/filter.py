"""The global rate-limit filter: one decision per new connection, asked of a limiter client.

Envoy's network ``RateLimitFilter`` (envoy-subset.md §5.5), shared by the two global
filters; only the client differs (``grpc_client.py`` for a Lyft-style rate-limit service,
``filters/redis_ratelimit`` for our own Redis-backed limiter):

* ``on_new_connection``: ``total``++, ``active``++, ask the client with this connection's
  descriptors; the chain is held (STOP_ITERATION) until the answer, and downstream bytes
  that arrive meanwhile are buffered by the connection. A client may answer inline (a
  decision needing no round trip, an open circuit breaker): then the chain goes on at
  once, exactly as Envoy's ``calling_limit_`` guard does.
* OK → ``ok``++ and the chain continues (plus ``near_limit``/``shadow_over_limit`` when
  the client flags them). OVER_LIMIT → ``over_limit``++, ``cx_closed``++, close with no
  flush. ERROR (a failure or the timeout) → ``error``++, then ``failure_mode_allowed``++
  and continue, or with ``failure_mode_deny`` ``cx_closed``++ and close.
* The connection closing while a decision is pending cancels it (``active``--).

Runtime keys ``ratelimit.tcp_filter_enabled`` / ``_enforcing`` do not exist in meshproxy
(no runtime layer): the filter is always enabled and enforcing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, Protocol

from filters.api import ConnectionEvent, FilterStatus, NetworkFilter
from filters.ratelimit.descriptors import Descriptors, DescriptorSet
from filters.ratelimit.stats import RateLimitStats

_CONTINUE = FilterStatus.CONTINUE
_STOP = FilterStatus.STOP_ITERATION


class LimitStatus(enum.Enum):
    OK = 0
    OVER_LIMIT = 1
    ERROR = 2


# Flags that may accompany a status (a bit set, so a decision allocates nothing).
NEAR_LIMIT: Final = 1  # OK, but a descriptor used more than the near-limit ratio of its limit
SHADOW_OVER_LIMIT: Final = 2  # a shadow-mode descriptor was over its limit; the status is OK

Done = Callable[[LimitStatus, int], None]


class Pending(Protocol):
    def cancel(self) -> object: ...


class LimitClient(Protocol):
    """What the filter asks for a decision (one client per worker)."""

    def limit(self, descriptors: Descriptors, done: Done) -> Pending | None:
        """Decide for one connection. ``done(status, flags)`` is called exactly once unless the
        returned handle is cancelled first; it may be called before ``limit`` returns."""
        ...


_NOT_STARTED, _CALLING, _COMPLETE = 0, 1, 2


class RateLimitFilter(NetworkFilter):
    """One connection's decision; everything shared is bound by ``factory``."""

    inspects_data = False

    def __init__(self, client: LimitClient, descriptors: DescriptorSet, static: Descriptors | None,
                 failure_mode_deny: bool, stats: RateLimitStats) -> None:
        self.client = client
        self.descriptors = descriptors
        self.static = static
        self.failure_mode_deny = failure_mode_deny
        self.stats = stats
        self.state = _NOT_STARTED
        self.calling = False
        self.denied = False
        self.pending: Pending | None = None

    def on_new_connection(self) -> FilterStatus:
        stats = self.stats
        stats.total.inc()
        stats.active.inc()
        self.state = _CALLING
        request = self.static if self.static is not None else self.descriptors.resolve(self.callbacks.info)
        self.calling = True
        self.pending = self.client.limit(request, self._complete)
        self.calling = False
        if self.state == _CALLING:
            return _STOP
        # Answered inline: closed (STOP) or allowed (CONTINUE), as _complete decided.
        return _STOP if self.denied else _CONTINUE

    def _complete(self, status: LimitStatus, flags: int) -> None:
        if self.state != _CALLING:
            return
        self.state = _COMPLETE
        self.pending = None
        stats = self.stats
        stats.active.dec()
        if status is LimitStatus.OK:
            stats.ok.inc()
            if flags & NEAR_LIMIT:
                stats.near_limit.inc()
            if flags & SHADOW_OVER_LIMIT:
                stats.shadow_over_limit.inc()
        elif status is LimitStatus.OVER_LIMIT:
            stats.over_limit.inc()
            stats.cx_closed.inc()
            self.denied = True
            self.callbacks.close(flush=False)
            return
        else:
            stats.error.inc()
            if self.failure_mode_deny:
                stats.cx_closed.inc()
                self.denied = True
                self.callbacks.close(flush=False)
                return
            stats.failure_mode_allowed.inc()
        if not self.calling:
            self.callbacks.continue_reading()

    def on_event(self, event: ConnectionEvent) -> None:
        if self.state == _CALLING:
            self.state = _COMPLETE
            self.stats.active.dec()
            if self.pending is not None:
                self.pending.cancel()
                self.pending = None


def factory(client: LimitClient, descriptors: DescriptorSet, failure_mode_deny: bool,
            stats: RateLimitStats) -> Callable[[], NetworkFilter]:
    """The per-connection factory (static descriptors are resolved once, here)."""
    static = descriptors.resolve(None) if descriptors.static else None

    def make() -> NetworkFilter:
        return RateLimitFilter(client, descriptors, static, failure_mode_deny, stats)

    return make
