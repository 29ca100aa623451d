"""The network filter contract: one small interface shared by every filter.

This is Envoy's ReadFilter/WriteFilter pair (``envoy/network/filter.h``) in Python.
A connection owns an ordered chain of filters:

* bytes read from downstream go through ``on_data`` of each filter **in order**;
* bytes written to downstream (``callbacks.write``) go through ``on_write`` of each
  filter **in reverse order** before they reach the socket;
* ``on_new_connection`` runs in order when the connection is accepted.

A filter returns ``FilterStatus.CONTINUE`` to pass the event to the next filter, or
``FilterStatus.STOP_ITERATION`` to stop it there. A filter that stopped
``on_new_connection`` (e.g. a rate limiter waiting for an answer) resumes the chain
with ``callbacks.continue_reading()``; downstream bytes that arrive meanwhile are
buffered by the connection (reading pauses above the buffer limit) and delivered
in order once the chain resumes.

The callbacks object is a filter's only way back to its connection: the worker's
connection code knows no protocol, and a filter knows no socket.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import asyncio


class FilterStatus(enum.Enum):
    """What the chain does after a filter has seen an event."""

    CONTINUE = 0
    STOP_ITERATION = 1


class ConnectionEvent(enum.Enum):
    """Why a connection closed, as told to ``NetworkFilter.on_event``."""

    REMOTE_CLOSE = 0  # the peer closed or reset the connection
    LOCAL_CLOSE = 1  # we (a filter, a timeout, a drain) closed it


class ConnectionInfo(Protocol):
    """Read-only facts about the downstream connection."""

    id: int
    remote_address: tuple[str, int]
    local_address: tuple[str, int]
    start_time: float


class FilterCallbacks(Protocol):
    """What a filter may ask of its downstream connection."""

    info: ConnectionInfo
    loop: asyncio.AbstractEventLoop

    def continue_reading(self) -> None:
        """Resume a chain that this filter stopped; buffered downstream data is delivered."""

    def inject_read_data(self, data: bytes, end_stream: bool, after: NetworkFilter) -> None:
        """Pass downstream bytes to the filters after ``after``: how a filter that returned
        STOP_ITERATION from ``on_data`` (e.g. to delay a request) lets them through later."""

    def write(self, data: bytes, end_stream: bool = False) -> None:
        """Send bytes to downstream (through the write filters); ``end_stream`` half-closes."""

    def close(self, flush: bool = True) -> None:
        """Close the downstream connection, after flushing pending output when ``flush``."""

    def read_disable(self, disable: bool) -> None:
        """Stop (True) or resume (False) reading from downstream. Calls are counted, not toggled."""

    def write_buffer_size(self) -> int:
        """Bytes queued towards downstream that the kernel has not taken yet."""

    def start_relay(self, caller: NetworkFilter, upstream: Upstream, down_seen: int, up_seen: int,
                    on_bytes: Callable[[int, int], None]) -> Any:
        """Join downstream and ``upstream`` inside the event loop (``workers/relay.py``): bytes
        then flow both ways with no Python call per chunk. Only a terminal proxy filter asks,
        once connected; the connection refuses (returns None) while any filter before
        ``caller`` has ``inspects_data`` or any filter has ``on_write``. ``down_seen`` and
        ``up_seen`` are the bytes already counted per side; later ones are reported to
        ``on_bytes(downstream_received, upstream_received)``. The returned relay has
        ``sample()``, ``quiet_seconds()`` and ``stop()`` (call it when either side closes)."""


class NetworkFilter:
    """Base class for network filters: every hook passes through unless overridden.

    ``inspects_data`` tells the connection whether the filter needs to see bytes after
    ``on_new_connection``; a filter that only decides at connect time (a rate limiter, an
    allow-list) sets it False, so a tcp_proxy behind it may relay in the event loop
    (``FilterCallbacks.start_relay``).
    """

    inspects_data: ClassVar[bool] = True
    callbacks: FilterCallbacks

    def initialize(self, callbacks: FilterCallbacks) -> None:
        """Called once, before any other hook, with the connection's callbacks."""
        self.callbacks = callbacks

    def on_new_connection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        """Bytes read from downstream; ``end_stream`` means downstream half-closed."""
        return FilterStatus.CONTINUE

    def on_write(self, data: bytes, end_stream: bool) -> FilterStatus:
        """Bytes about to be written to downstream."""
        return FilterStatus.CONTINUE

    def on_event(self, event: ConnectionEvent) -> None:
        """The downstream connection closed; release upstream resources here."""

    def on_above_write_buffer_high_watermark(self) -> None:
        """Downstream cannot take data as fast as we produce it: stop reading its source."""

    def on_below_write_buffer_low_watermark(self) -> None:
        """Downstream drained its backlog: resume reading the source."""


class UpstreamCallbacks(Protocol):
    """What an upstream connection reports to its owning filter."""

    def on_upstream_data(self, data: bytes) -> None: ...
    def on_upstream_eof(self) -> None: ...
    def on_upstream_closed(self, exc: Exception | None) -> None: ...
    def on_upstream_above_high_watermark(self) -> None: ...
    def on_upstream_below_low_watermark(self) -> None: ...


class Upstream(Protocol):
    """A connected upstream, as a filter drives it (``transport`` is for the connection code)."""

    transport: Any

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self, flush: bool = True) -> None: ...


class ConnectHandle(Protocol):
    def cancel(self) -> None: ...


class WorkerContext(Protocol):
    """What a filter factory may use in its worker (given to ``FilterType.build``).

    ``clusters.get(name)`` returns the worker's cluster object (``choose_host``, ``stats``,
    ``config``); ``connect_upstream`` opens a connection to one of its hosts within the
    cluster's connect_timeout and calls ``done(upstream, failure)`` exactly once, with
    failure "" on success, else "connect_fail" or "connect_timeout".
    """

    index: int
    loop: asyncio.AbstractEventLoop
    stats: Any
    clusters: Any
    host_shared: Any  # the host-wide rate-limit region (filters/local_ratelimit/shared_bucket.py)

    def connect_upstream(self, cluster: Any, host: Any, owner: UpstreamCallbacks,
                         done: Callable[[Upstream | None, str], None]) -> ConnectHandle: ...
