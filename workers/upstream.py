"""Upstream connections: connect with a timeout, then relay events to the owning filter.

``connect_upstream`` opens a TCP connection to a host without ``asyncio.wait_for``
(one task and one timer per attempt) and reports the outcome to callbacks, so filters
stay callback-driven like the connection code. The ``UpstreamConnection`` protocol then
forwards data, EOF, close and write-buffer watermarks to its owner.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from filters.api import UpstreamCallbacks
from workers.cluster import ClusterRuntime, Host


class UpstreamConnection(asyncio.Protocol):
    """A connected upstream socket; counts its cluster's and host's stats."""

    def __init__(self, owner: UpstreamCallbacks, cluster: ClusterRuntime, host: Host,
                 buffer_limit: int) -> None:
        self.owner = owner
        self.cluster = cluster
        self.host = host
        self.buffer_limit = buffer_limit
        self.transport: asyncio.Transport | None = None
        self.connected_at = 0.0
        self.closed_locally = False
        self._reading_paused = False  # by flow control
        self._read_holds = 0  # by others (a relay switching to splice): counted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        transport.set_write_buffer_limits(high=self.buffer_limit, low=self.buffer_limit // 2)
        self.write = transport.write  # type: ignore[method-assign]  # hot path: no wrapper call
        self.connected_at = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.owner.on_upstream_data(data)

    def eof_received(self) -> bool:
        self.owner.on_upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        stats = self.cluster.stats
        stats.upstream_cx_active.dec()
        stats.upstream_cx_destroy.inc()
        if self.closed_locally:
            stats.upstream_cx_destroy_local.inc()
        else:
            stats.upstream_cx_destroy_remote.inc()
        stats.upstream_cx_length_ms.record((time.monotonic() - self.connected_at) * 1000.0)
        self.host.stats.cx_active.dec()
        self.owner.on_upstream_closed(exc)

    def pause_writing(self) -> None:
        self.cluster.stats.upstream_flow_control_backed_up_total.inc()
        self.owner.on_upstream_above_high_watermark()

    def resume_writing(self) -> None:
        self.cluster.stats.upstream_flow_control_drained_total.inc()
        self.owner.on_upstream_below_low_watermark()

    # ----- used by the owner -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = True
            self.cluster.stats.upstream_flow_control_paused_reading_total.inc()
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = False
            self.cluster.stats.upstream_flow_control_resumed_reading_total.inc()
            if not self._read_holds:
                self.transport.resume_reading()

    def hold_reading(self, hold: bool) -> None:
        """Stop reading until as many releases as holds; flow control cannot resume it meanwhile."""
        self._read_holds += 1 if hold else -1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if hold and self._read_holds == 1:
            transport.pause_reading()
        elif not hold and not self._read_holds and not self._reading_paused:
            transport.resume_reading()

    def close(self, flush: bool = True) -> None:
        if self.transport is None or self.closed_locally:
            return
        self.closed_locally = True
        if flush:
            self.transport.close()
        else:
            self.transport.abort()


ConnectDone = Callable[["UpstreamConnection | None", str], None]


class ConnectAttempt:
    """One connection attempt to one host, bounded by the cluster's connect_timeout.

    ``done(conn, failure)`` is called exactly once: with the connected protocol and "",
    or with None and "connect_fail" / "connect_timeout" / "cancelled".

    The timeout is about the host: a handshake the kernel has completed is not timed out
    because a busy event loop ran the timer before the connect's completion (libuv runs
    due timers before it polls for I/O, so after a stall of a second both are ready and
    the timer wins).
    """

    __slots__ = ("_done", "_sock", "_task", "_timer", "cluster", "host", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, cluster: ClusterRuntime, host: Host,
                 protocol: UpstreamConnection, done: ConnectDone) -> None:
        self.cluster = cluster
        self.host = host
        self._done: ConnectDone | None = done
        self.started = time.monotonic()
        cluster.stats.upstream_cx_total.inc()
        host.stats.cx_total.inc()
        self._sock: socket.socket | None = None
        self._task = loop.create_task(self._open(loop, protocol))
        self._task.add_done_callback(self._finished)
        self._timer = loop.call_later(cluster.connect_timeout, self._timed_out)

    def cancel(self) -> None:
        if self._done is not None:
            self._done = None
            self._timer.cancel()
            self._task.cancel()

    def _timed_out(self) -> None:
        done, self._done = self._done, None
        if done is None:
            return
        if self._sock is not None and _handshake_done(self._sock):
            self._done = done  # _finished reports it, at most a loop iteration or two away
            return
        self._task.cancel()
        self.cluster.stats.upstream_cx_connect_timeout.inc()
        self.cluster.stats.upstream_cx_connect_fail.inc()
        self.host.stats.cx_connect_fail.inc()
        done(None, "connect_timeout")

    def _finished(self, task: asyncio.Task) -> None:
        self._timer.cancel()
        done, self._done = self._done, None
        if task.cancelled():
            return
        exc = task.exception()
        if done is None:
            if exc is None:  # connected after we gave up: drop it
                task.result().transport.abort()
            return
        if exc is not None:
            self.cluster.stats.upstream_cx_connect_fail.inc()
            self.host.stats.cx_connect_fail.inc()
            done(None, "connect_fail")
            return
        conn = task.result()
        stats = self.cluster.stats
        stats.upstream_cx_active.inc()
        stats.upstream_cx_connect_ms.record((time.monotonic() - self.started) * 1000.0)
        self.host.stats.cx_active.inc()
        done(conn, "")

    async def _open(self, loop: asyncio.AbstractEventLoop,
                    protocol: UpstreamConnection) -> UpstreamConnection:
        host = self.host
        family = socket.AF_INET6 if ":" in host.address else socket.AF_INET
        sock = self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, (host.address, host.port))
            await loop.create_connection(lambda: protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        return protocol


def _handshake_done(sock: socket.socket) -> bool:
    try:
        sock.getpeername()  # ENOTCONN until the handshake completes; leaves SO_ERROR alone
    except OSError:
        return False
    return True

