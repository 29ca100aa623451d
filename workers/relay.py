"""Relay mode: a connected tcp_proxy whose bytes no filter reads is joined inside uvloop.

Once both sockets are joined, a downstream read is handed by the event loop straight to the
upstream transport's ``write`` (and the other way), so no Python frame runs per chunk: that
frame, with its stats and timestamps, was most of the Python cost of a small request. What
the per-chunk code did is done differently:

* **Byte counters.** The kernel counts the bytes each socket received (TCP_INFO
  ``tcpi_bytes_received``). A relay samples both sockets every second, at each half-close
  and when either side closes, and reports the deltas to its owner. Bytes received by one
  socket are the bytes written to the other, so two numbers give all four counters. The
  kernel's count includes the peer's FIN as one byte; it is taken off when the socket's
  state says a FIN came. CLOSE is read as "FIN came": a socket that sent its FIN first
  goes to CLOSE the moment the peer's FIN arrives, before the event loop reads the EOF (a
  sample taken then must not count the FIN). A reset without a FIN is therefore counted
  one byte short: the kernel keeps nothing that tells the two apart.
* **Idle timeout.** TCP_INFO ``tcpi_last_data_recv`` says how long each socket has been quiet.
* **Everything else** (EOF, close, flow-control watermarks) still reaches the connection's
  Python protocols, unchanged: only ``data_received`` is rebound.
* **Bulk.** A direction that carried at least ``SPLICE_AUTO_BYTES`` in the last second is
  switched to ``splice(2)`` (``workers/splice.py``), which skips the copies through user
  space; like HAProxy's ``option splice-auto``, small request/response traffic is left on
  uvloop's compiled path, which is cheaper per read. The switch holds the source (the
  connection's counted read-disable, which flow control cannot undo), waits until uvloop
  has written out everything queued for the destination, and only then splices, so no
  byte overtakes another.

A socket's counters are read while its file descriptor is known to be open: from the owner's
event callbacks, which run before uvloop closes the descriptor, and from the sampler until
``stop()``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

from workers.splice import SplicedDirection

SAMPLE_INTERVAL_S = 1.0
SPLICE_AUTO_BYTES = 8 * 1024 * 1024  # per direction per sample interval
_DRAIN_POLL_S = 0.005  # while switching: how often to look at the destination's queue

# struct tcp_info (linux/tcp.h): offsets stable since Linux 4.1.
_TCP_INFO_LEN = 136
# tcpi_state values in which the peer's FIN has arrived (TIME_WAIT, CLOSE, CLOSE_WAIT,
# LAST_ACK, CLOSING). An open socket reaches CLOSE from FIN_WAIT2 when the peer's FIN
# arrives, or by a reset (see the module docstring).
_FIN_RECEIVED_STATES = frozenset((6, 7, 8, 9, 11))
_LAST_DATA_RECV = struct.Struct("I")  # at 52, milliseconds
_BYTES_RECEIVED = struct.Struct("Q")  # at 128

BytesCallback = Callable[[int, int], None]
Hold = Callable[[bool], None]  # hold(True) stops reading a side, counted; hold(False) releases


def tcp_info(sock: Any) -> bytes | None:
    """The socket's TCP_INFO, or None once it cannot be read (closed, not TCP)."""
    try:
        info: bytes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, ValueError):
        return None
    return info if len(info) >= _TCP_INFO_LEN else None


def bytes_received(sock: Any) -> int | None:
    """Payload bytes this TCP socket has received over its life (its FIN not counted)."""
    info = tcp_info(sock)
    if info is None:
        return None
    received: int = _BYTES_RECEIVED.unpack_from(info, 128)[0]
    if info[0] in _FIN_RECEIVED_STATES and received:
        received -= 1
    return received


def quiet_seconds(sock: Any) -> float | None:
    """Seconds since this TCP socket last received data."""
    info = tcp_info(sock)
    return None if info is None else _LAST_DATA_RECV.unpack_from(info, 52)[0] / 1000.0


class Relay:
    """Two joined transports; reports the bytes they carry to ``on_bytes(down_rx, up_rx)``."""

    __slots__ = ("_down", "_down_at_tick", "_down_seen", "_hold_down", "_hold_up", "_loop", "_on_bytes",
                 "_sampler", "_spliced", "_switching", "_transports", "_up", "_up_at_tick", "_up_seen")

    def __init__(self, down: asyncio.Transport, up: asyncio.Transport, down_seen: int, up_seen: int,
                 on_bytes: BytesCallback, hold_down: Hold | None = None, hold_up: Hold | None = None) -> None:
        """``down_seen``/``up_seen``: the bytes each socket received that were already counted.
        ``hold_down``/``hold_up``: the owner's counted read-disable per side (default: pause
        the transport, for owners without flow control of their own)."""
        self._loop = asyncio.get_running_loop()
        self._transports = {"downstream": down, "upstream": up}
        self._hold_down = hold_down or _transport_hold(down)
        self._hold_up = hold_up or _transport_hold(up)
        self._down = down.get_extra_info("socket")
        self._up = up.get_extra_info("socket")
        self._down_seen = self._down_at_tick = down_seen
        self._up_seen = self._up_at_tick = up_seen
        self._on_bytes = on_bytes
        self._spliced: dict[str, SplicedDirection] = {}
        self._switching: set[str] = set()
        self._sampler: RelaySampler | None = RelaySampler.for_loop(self._loop)
        self._sampler.add(self)
        up.set_protocol(_rebound(up.get_protocol(), down.write))
        down.set_protocol(_rebound(down.get_protocol(), up.write))

    def sample(self) -> None:
        """Report the bytes received since the last sample (sockets already gone count 0)."""
        if self._sampler is None:
            return
        down = bytes_received(self._down)
        up = bytes_received(self._up)
        down_delta = 0 if down is None else down - self._down_seen
        up_delta = 0 if up is None else up - self._up_seen
        if down_delta > 0:
            self._down_seen = down  # type: ignore[assignment]
        if up_delta > 0:
            self._up_seen = up  # type: ignore[assignment]
        if down_delta > 0 or up_delta > 0:
            self._on_bytes(max(down_delta, 0), max(up_delta, 0))

    def on_tick(self) -> None:
        """The sampler's once-a-second visit: count, then splice any direction carrying bulk."""
        self.sample()
        if self._sampler is None:
            return
        if self._down_seen - self._down_at_tick >= SPLICE_AUTO_BYTES:
            self._start_switch("downstream", "upstream", self._hold_down)
        if self._up_seen - self._up_at_tick >= SPLICE_AUTO_BYTES:
            self._start_switch("upstream", "downstream", self._hold_up)
        self._down_at_tick, self._up_at_tick = self._down_seen, self._up_seen

    def _start_switch(self, src: str, dst: str, hold: Hold) -> None:
        name = f"{src}->{dst}"
        current = self._spliced.get(name)
        if name in self._switching or (current is not None and current.active):
            return
        self._switching.add(name)
        hold(True)
        self._finish_switch(name, src, dst, hold, self._loop.time() + SAMPLE_INTERVAL_S)

    def _finish_switch(self, name: str, src: str, dst: str, hold: Hold, deadline: float) -> None:
        """Splice once uvloop has written out what it queued for ``dst`` (else it would be
        overtaken); give up, releasing the hold, if that takes past ``deadline``."""
        if name not in self._switching:  # stop() came first
            return
        src_transport, dst_transport = self._transports[src], self._transports[dst]
        if src_transport.is_closing() or dst_transport.is_closing() or self._loop.time() > deadline:
            self._switching.discard(name)
            hold(False)
        elif dst_transport.get_write_buffer_size():
            self._loop.call_later(_DRAIN_POLL_S, self._finish_switch, name, src, dst, hold, deadline)
        else:
            self._switching.discard(name)
            self._spliced[name] = SplicedDirection(self._loop, src_transport, dst_transport, name,
                                                   release=lambda: hold(False))

    def quiet_seconds(self) -> float:
        """How long neither socket has received data (0 when unknown)."""
        quiet = [q for q in (quiet_seconds(self._down), quiet_seconds(self._up)) if q is not None]
        return min(quiet) if quiet else 0.0

    def stop(self) -> None:
        """Take a last sample and stop sampling; call before either descriptor closes."""
        self.sample()
        self._switching.clear()  # the connection is closing: holds no longer matter
        for direction in self._spliced.values():
            direction.stop()
        if self._sampler is not None:
            self._sampler.discard(self)
            self._sampler = None


def _transport_hold(transport: Any) -> Hold:
    def hold(on: bool) -> None:
        if not transport.is_closing():
            (transport.pause_reading if on else transport.resume_reading)()
    return hold


def _rebound(protocol: Any, sink: Callable[[bytes], object]) -> Any:
    # uvloop caches protocol.data_received when the protocol is set: an instance attribute
    # that is the peer transport's (compiled) write makes each read a C-to-C call.
    protocol.data_received = sink
    return protocol


class RelaySampler:
    """One timer per event loop that samples every live relay each second."""

    _current: RelaySampler | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.relays: set[Relay] = set()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> RelaySampler:
        current = cls._current
        if current is None or current.loop is not loop:
            current = cls._current = cls(loop)
        return current

    def add(self, relay: Relay) -> None:
        self.relays.add(relay)
        if self._timer is None:
            self._timer = self.loop.call_later(SAMPLE_INTERVAL_S, self._tick)

    def discard(self, relay: Relay) -> None:
        self.relays.discard(relay)

    def _tick(self) -> None:
        self._timer = None
        for relay in list(self.relays):
            relay.on_tick()
        if self.relays:
            self._timer = self.loop.call_later(SAMPLE_INTERVAL_S, self._tick)
