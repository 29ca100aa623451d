"""Splice mode: a relayed direction carrying bulk data moves it with ``os.splice``.

Relay mode (``workers/relay.py``) still copies every byte three times: into uvloop's read
buffer, into a ``bytes`` object, and back into the kernel. ``splice(2)`` from a
socket into a pipe and from the pipe into the other socket moves page references
instead: on loopback it cost 0.4x relay mode's CPU per GB (bench/splice_probe.py). For
small request/response traffic it would cost more (a Python callback per read instead of
uvloop's compiled read), so, like HAProxy's ``option splice-auto``, a relay switches one
direction to splicing only once it carries bulk data (``Relay`` decides, once a second).

While a direction is spliced, its source is held (reading stopped, in the connection's
counted way, so flow control cannot restart it) and this object reads the socket through a
duplicate descriptor. Backpressure is the pipe: when the destination
socket is full, the source is not read until the pipe drains, so memory stays at most
one pipe (1 MiB) per direction. EOF and errors are left to uvloop: with the pipe empty,
the hold is released, the source transport reads again and meets them on its own path,
so half-close, close and error handling are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

PIPE_SIZE = 1024 * 1024  # the unprivileged maximum (/proc/sys/fs/pipe-max-size) by default
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class SplicedDirection:
    """``src`` socket -> pipe -> ``dst`` socket until EOF or an error, then back to uvloop."""

    __slots__ = ("_dst", "_loop", "_pending", "_pipe_r", "_pipe_w", "_release", "_size", "_src",
                 "_waiting_for_dst", "name")

    def __init__(self, loop: asyncio.AbstractEventLoop, src_transport: Any, dst_transport: Any,
                 name: str, release: Callable[[], None]) -> None:
        """Call only while the source is held (not read by uvloop) and ``dst_transport`` has
        nothing buffered; ``release()`` ends the hold when the socket is handed back."""
        self.name = name
        self._loop = loop
        self._release = release
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # EPERM past the per-user pipe budget: default size
            fcntl.fcntl(self._pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._size = fcntl.fcntl(self._pipe_w, fcntl.F_GETPIPE_SZ)
        # Duplicates: uvloop keeps its own descriptors registered for the other direction.
        self._src = os.dup(src_transport.get_extra_info("socket").fileno())
        self._dst = os.dup(dst_transport.get_extra_info("socket").fileno())
        self._pending = 0
        self._waiting_for_dst = False
        loop.add_reader(self._src, self._on_readable)
        log.debug("relay: splicing %s", name)

    @property
    def active(self) -> bool:
        return self._src >= 0

    def _on_readable(self) -> None:
        try:
            moved = os.splice(self._src, self._pipe_w, self._size, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            moved = 0  # a reset: handed back, uvloop then reads the socket's EOF
        if moved == 0:
            self._hand_back()
            return
        self._pending += moved
        self._flush()

    def _flush(self) -> None:
        try:
            while self._pending:
                self._pending -= os.splice(self._pipe_r, self._dst, self._pending, flags=_FLAGS)
        except BlockingIOError:
            if not self._waiting_for_dst:  # destination full: stop reading until it drains
                self._waiting_for_dst = True
                self._loop.remove_reader(self._src)
                self._loop.add_writer(self._dst, self._flush)
            return
        except OSError:
            self._pending = 0  # the destination broke: its transport finds out and closes
            self._hand_back()
            return
        if self._waiting_for_dst:
            self._waiting_for_dst = False
            self._loop.remove_writer(self._dst)
            self._loop.add_reader(self._src, self._on_readable)

    def _hand_back(self) -> None:
        """EOF or an error, with the pipe empty: uvloop reads the source again."""
        self.stop()
        self._release()

    def stop(self) -> None:
        """Release the pipe and the duplicate descriptors (the connection is closing)."""
        if self._src < 0:
            return
        self._loop.remove_reader(self._src)
        if self._waiting_for_dst:
            self._loop.remove_writer(self._dst)
        for fd in (self._src, self._dst, self._pipe_r, self._pipe_w):
            os.close(fd)
        self._src = self._dst = -1
