"""A downstream connection: an asyncio Protocol that runs a chain of network filters.

The connection knows no protocol. It feeds bytes to the filters (``filters.api``), and
implements the callbacks they use to write, close, pause and resume.

State rules:
* ``on_new_connection`` runs filter by filter; a filter that returns STOP_ITERATION
  holds the chain until it calls ``continue_reading()``. Bytes that arrive while the
  chain is held are buffered here, and reading pauses once the buffer passes the
  listener's ``per_connection_buffer_limit_bytes``.
* Downstream EOF is a half-close: filters get ``on_data(b"", end_stream=True)`` and
  the socket stays open for writing until a filter ends the write side too.
* Flow control is two-sided and counted: ``read_disable(True)`` calls nest (reading
  resumes when every caller has re-enabled it), and the transport's write-buffer
  watermarks (high = buffer limit, low = half) are forwarded to filters, which pause
  the other side's reading.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from filters.api import ConnectionEvent, FilterStatus, NetworkFilter, Upstream
from workers.relay import BytesCallback, Relay

if TYPE_CHECKING:
    from workers.listener import ListenerRuntime

log = logging.getLogger("meshproxy.connection")
_ids = itertools.count(1)
_STOP = FilterStatus.STOP_ITERATION


def _overrides(f: NetworkFilter, hook: str) -> bool:
    return getattr(type(f), hook) is not getattr(NetworkFilter, hook)


class ConnectionInfoData:
    __slots__ = ("id", "local_address", "remote_address", "start_time")

    def __init__(self, remote: tuple[str, int], local: tuple[str, int]) -> None:
        self.id = next(_ids)
        self.remote_address = remote
        self.local_address = local
        self.start_time = time.monotonic()


class DownstreamConnection(asyncio.Protocol):
    """One accepted connection and its filter chain; implements ``filters.api.FilterCallbacks``."""

    def __init__(self, listener: ListenerRuntime, filters: list[NetworkFilter]) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.filters = filters
        self._write_filters = [f for f in reversed(filters) if _overrides(f, "on_write")]
        self._buffer_limit = listener.config.per_connection_buffer_limit_bytes
        self.transport: asyncio.Transport | None = None
        self.info: ConnectionInfoData | None = None
        self._ready_index = 0  # filters [0, _ready_index) have passed on_new_connection
        self._held: list[bytes] = []  # data read while the chain is held
        self._held_bytes = 0
        self._held_eof = False
        self._read_disabled = 0
        self._paused_for_held = False
        self._read_closed = False
        self._write_closed = False
        self._closed = False
        # Where downstream bytes go: None while the chain is held (they are buffered), else the
        # only filter's on_data, or a loop over all filters. Saves a check per read.
        self._deliver: Callable[[bytes, bool], object] | None = None

    # ----- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        limit = self._buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        peer = transport.get_extra_info("peername") or ("", 0)
        sock = transport.get_extra_info("sockname") or ("", 0)
        self.info = ConnectionInfoData(peer[:2], sock[:2])
        self.listener.on_connection_open(self)
        for f in self.filters:
            f.initialize(self)
        self._run_new_connection()

    def data_received(self, data: bytes) -> None:
        deliver = self._deliver
        if deliver is None:
            self._hold(data)
        else:
            deliver(data, False)

    def _deliver_all(self, data: bytes, end_stream: bool) -> None:
        for f in self.filters:
            if f.on_data(data, end_stream) is _STOP:
                return

    def eof_received(self) -> bool:
        self._read_closed = True
        if self._ready_index < len(self.filters) or self._held:
            self._held_eof = True
        else:
            for f in self.filters:
                if f.on_data(b"", True) is _STOP:
                    break
        if self._write_closed:
            self.close()
            return False
        return True  # keep the write side open: a half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            self.listener.on_connection_closed(self)
            return
        self._closed = True
        self.listener.on_connection_closed(self)
        for f in self.filters:
            f.on_event(ConnectionEvent.REMOTE_CLOSE)

    def pause_writing(self) -> None:
        for f in self.filters:
            f.on_above_write_buffer_high_watermark()

    def resume_writing(self) -> None:
        for f in self.filters:
            f.on_below_write_buffer_low_watermark()

    # ----- FilterCallbacks ------------------------------------------------------------------

    def continue_reading(self) -> None:
        if self._closed:
            return
        self._ready_index += 1
        self._run_new_connection()

    def inject_read_data(self, data: bytes, end_stream: bool, after: NetworkFilter) -> None:
        """Deliver downstream bytes to the filters after ``after`` (e.g. once a delay ends)."""
        filters = self.filters
        for f in filters[filters.index(after) + 1:]:
            if self._closed or f.on_data(data, end_stream) is _STOP:
                return

    def start_relay(self, caller: NetworkFilter, upstream: Upstream, down_seen: int, up_seen: int,
                    on_bytes: BytesCallback) -> Relay | None:
        """Join downstream and ``upstream`` in the event loop when no filter needs the bytes any
        more: none before ``caller`` inspects data, none watches writes, the chain has delivered
        everything it held and downstream has not half-closed. Otherwise None."""
        if (self._deliver is None or self._closed or self._read_closed or self._write_closed
                or self._write_filters or self.transport is None):
            return None
        for f in self.filters:
            if f is caller:
                break
            if f.inspects_data:
                return None
        up_transport = getattr(upstream, "transport", None)
        if up_transport is None or up_transport.is_closing():
            return None
        return Relay(self.transport, up_transport, down_seen, up_seen, on_bytes,  # type: ignore[arg-type]
                     hold_down=self.read_disable, hold_up=upstream.hold_reading)

    def write(self, data: bytes, end_stream: bool = False) -> None:
        transport = self.transport
        if self._closed or self._write_closed or transport is None:
            return
        for f in self._write_filters:
            if f.on_write(data, end_stream) is _STOP:
                return
        if data:
            transport.write(data)
        if end_stream:
            self._write_closed = True
            if self._read_closed:
                self.close()
            elif transport.can_write_eof():
                transport.write_eof()

    def close(self, flush: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self.transport
        if transport is not None:
            if flush:
                transport.close()
            else:
                transport.abort()
        for f in self.filters:
            f.on_event(ConnectionEvent.LOCAL_CLOSE)

    def read_disable(self, disable: bool) -> None:
        if disable:
            self._read_disabled += 1
            if self._read_disabled == 1:
                self._set_reading(False)
        elif self._read_disabled > 0:
            self._read_disabled -= 1
            if self._read_disabled == 0:
                self._set_reading(True)

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    @property
    def closed(self) -> bool:
        return self._closed

    # ----- internals ----------------------------------------------------------------------

    def _set_reading(self, on: bool) -> None:
        transport = self.transport
        if transport is None or self._closed:
            return
        if on and not self._paused_for_held:
            transport.resume_reading()
        elif not on:
            transport.pause_reading()

    def _run_new_connection(self) -> None:
        filters = self.filters
        while self._ready_index < len(filters):
            if filters[self._ready_index].on_new_connection() is _STOP:
                return
            if self._closed:
                return
            self._ready_index += 1
        self._release_held()

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > self._buffer_limit and not self._paused_for_held:
            self._paused_for_held = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _release_held(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        for data in held:
            if self._closed:
                return
            for f in self.filters:
                if f.on_data(data, False) is _STOP:
                    break
        if self._paused_for_held:
            self._paused_for_held = False
            if self._read_disabled == 0 and not self._closed and self.transport is not None:
                self.transport.resume_reading()
        if self._held_eof and not self._closed:
            self._held_eof = False
            for f in self.filters:
                if f.on_data(b"", True) is _STOP:
                    break
        if not self._closed:
            self._deliver = self.filters[0].on_data if len(self.filters) == 1 else self._deliver_all
