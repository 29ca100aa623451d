"""Single-host commands that need more than a relayed reply: redirection and upstream command stats.

``enable_redirection`` (Envoy's ``ConnPoolSettings``): a server of a Redis Cluster answers a key
it does not own with ``-MOVED <slot> <ip:port>`` or ``-ASK <slot> <ip:port>``. The command is
then sent once more to that address (after ``ASKING`` for ASK) and the client gets the second
reply. The address may be a host of the cluster or an unknown one; connections to unknown
hosts are opened on demand, at most ``max_upstream_unknown_connections`` per worker and pool
(past that, and for hostnames, which would need Envoy's DNS cache, the redirection error is
passed to the client, as Envoy does). Only simple commands and EVAL are redirected here;
fragments of multi-key commands pass MOVED/ASK through.

``enable_command_stats``: ``cluster.<c>.upstream_commands.<cmd>.{total,success,failure}`` and
``.latency`` (µs), per command sent.

Both need the command's frame and upstream at reply time, so they use ``TrackedSlot``; the plain
``Slot`` stays as small as possible for the common configuration.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from filters.redis_proxy.resp import encode_command
from filters.redis_proxy.slots import Slot
from filters.redis_proxy.upstream import NULL_SINK, RedisUpstream
from stats_shm.block import StatBlock, sanitize

if TYPE_CHECKING:
    from filters.redis_proxy.pool import ClusterPool
    from filters.redis_proxy.stats import CommandStats, UpstreamCommandStats

ASKING_FRAME = encode_command([b"ASKING"])


class UnknownHostStats(StatBlock):
    """The per-host figures of a redirection target outside the cluster (as ``HostStats``)."""

    COUNTERS = ("cx_total", "cx_connect_fail", "rq_total", "rq_timeout", "rq_success", "rq_error")
    GAUGES = ("cx_active", "rq_active")


class UnknownHost:
    """A redirection target that is not a host of the cluster (what ``connect_upstream`` needs)."""

    __slots__ = ("address", "port", "rq_active", "stats", "weight")

    def __init__(self, address: str, port: int, stats: UnknownHostStats) -> None:
        self.address = address
        self.port = port
        self.weight = 1
        self.rq_active = 0
        self.stats = stats

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"


def redirect_target(pool: ClusterPool, address: bytes) -> RedisUpstream | None:
    """The upstream for ``ip:port`` from a MOVED/ASK reply (None: pass the error through)."""
    text, _, port_text = address.decode(errors="replace").rpartition(":")
    text = text.strip("[]")
    try:
        ipaddress.ip_address(text)
        port = int(port_text)
    except ValueError:
        return None
    for host in pool.cluster.hosts:
        if host.address == text and host.port == port:
            return pool.upstream(host)
    unknown = pool.unknown
    up = unknown.get((text, port))
    if up is None:
        if len(unknown) >= pool.settings.max_upstream_unknown_connections:
            return None
        stats = UnknownHostStats(pool.worker.stats,
                                 f"_host.{sanitize(pool.cluster.config.stat_name)}.{sanitize(f'{text}:{port}')}.")
        up = unknown[(text, port)] = RedisUpstream(pool, UnknownHost(text, port, stats))
    return up


class TrackedSlot(Slot):
    """A single-host command's slot that may redirect once and may count upstream stats."""

    __slots__ = ("frame", "redirected", "up", "upstream_stats")

    def __init__(self, conn: Any, stats: CommandStats, start: float, frame: bytes, up: RedisUpstream | None,
                 name: str) -> None:
        super().__init__(conn, stats, start)
        self.frame = frame
        self.up = up
        self.redirected = not conn.shared.redirect  # nothing to follow when redirection is off
        self.upstream_stats: UpstreamCommandStats | None = None
        if up is not None and conn.shared.command_stats:
            self.upstream_stats = up.pool.redis_stats.command(name)
            self.upstream_stats.total.inc()

    def on_reply(self, frame: bytes, now: float) -> None:
        if not self.redirected and (frame.startswith(b"-MOVED ") or frame.startswith(b"-ASK ")):
            self.redirected = True
            parts = frame[1:-2].split()
            assert self.up is not None
            target = redirect_target(self.up.pool, parts[-1]) if len(parts) == 3 else None
            if target is not None:
                if parts[0] == b"ASK":
                    target.send(ASKING_FRAME, NULL_SINK)
                target.send(self.frame, self)
                return
        upstream_stats = self.upstream_stats
        if upstream_stats is not None:
            upstream_stats.success.inc()
            upstream_stats.latency.record((now - self.start) * 1_000_000.0)
        super().on_reply(frame, now)

    def on_failure(self, frame: bytes) -> None:
        if self.upstream_stats is not None:
            self.upstream_stats.failure.inc()
        super().on_failure(frame)
