"""Reply slots: each client command's place in that client's reply queue, in request order.

The filter appends one slot per command and writes the filled front of the queue once per
event-loop pass (``RedisProxyFilter.flush``). ``Ready`` holds a reply made by the proxy;
``Slot`` is completed by one upstream reply, relayed verbatim, and counts the command's
``success`` (any Redis reply) or ``error`` (a reply the proxy made up) and its ``latency``.
Multi-key and SCAN slots (``splitter``) and redirecting ones (``redirect``) extend ``Slot``.

``RedisUpstream.on_data`` completes plain ``Slot`` objects inline, with the same effect as
``on_reply`` per slot: consecutive replies to one client's commands of one read (same
command, same start, same arrival) form a run whose ``success`` and ``latency`` are counted
once (``count_replies``), not once per reply.
"""

from __future__ import annotations

from typing import Any

from filters.redis_proxy.stats import CommandStats


class Ready:
    """A slot whose reply is already known."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes) -> None:
        self.reply = reply


class Slot:
    """A slot completed by one upstream reply, relayed verbatim."""

    __slots__ = ("conn", "reply", "start", "stats")

    def __init__(self, conn: Any, stats: CommandStats, start: float) -> None:
        self.conn = conn
        self.stats = stats
        self.start = start
        self.reply: bytes | None = None

    def on_reply(self, frame: bytes, now: float) -> None:
        self.reply = frame
        stats = self.stats
        stats.success.inc()
        stats.latency.record((now - self.start) * stats.scale)
        conn = self.conn
        if not conn.dirty:
            conn.dirty = True
            conn.flusher.add(conn)

    def on_failure(self, frame: bytes) -> None:
        self.reply = frame
        stats = self.stats
        stats.error.inc()
        conn = self.conn
        stats.latency.record((conn.loop.time() - self.start) * stats.scale)
        if not conn.dirty:
            conn.dirty = True
            conn.flusher.add(conn)


def count_replies(stats: CommandStats, start: float, n: int, now: float) -> None:
    """What ``Slot.on_reply`` counts, for ``n`` replies of commands started at ``start``."""
    stats.success.inc(n)
    stats.latency.record_n((now - start) * stats.scale, n)
