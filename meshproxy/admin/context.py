"""What the admin endpoint needs from the main process: the ``AdminContext`` protocol.

The admin server never reaches into the main process's state; every endpoint goes
through one of these methods, all called on the main process's event loop thread and
expected to return quickly (no I/O that can block). ``MainProcess`` implements the
protocol; tests use small fakes.

The small frozen dataclasses describe ``/clusters``; their fields and defaults follow
Envoy's (envoy-subset.md §8, §7.1): circuit-breaker defaults 1024/1024/1024/3,
``health_flags`` ``"healthy"`` or a concatenation such as ``"/failed_active_hc"``,
success rates ``-1`` when unknown.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from stats_shm import Snapshot


class ServerState(enum.Enum):
    """``admin.v3.ServerInfo.State``; ``/ready`` answers 200 only for LIVE."""

    LIVE = "LIVE"
    DRAINING = "DRAINING"
    PRE_INITIALIZING = "PRE_INITIALIZING"
    INITIALIZING = "INITIALIZING"


@dataclass(frozen=True, slots=True)
class HostInfo:
    """One upstream host of a cluster, as ``/clusters`` shows it."""

    address: str  # "ip:port" ("[v6]:port" for IPv6)
    cx_active: int = 0
    cx_connect_fail: int = 0
    cx_total: int = 0
    rq_active: int = 0
    rq_error: int = 0
    rq_success: int = 0
    rq_timeout: int = 0
    rq_total: int = 0
    hostname: str = ""
    health_flags: str = "healthy"
    weight: int = 1
    region: str = ""
    zone: str = ""
    sub_zone: str = ""
    canary: bool = False
    priority: int = 0
    success_rate: float = -1.0
    local_origin_success_rate: float = -1.0


# Host stats by kind, in the order Envoy prints them (sorted by name).
HOST_COUNTERS: tuple[str, ...] = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout",
                                  "rq_total")
HOST_GAUGES: tuple[str, ...] = ("cx_active", "rq_active")
# Per-host stats live in the segment as ``_host.<cluster stat name>.<ip:port>.<stat>``: the
# leading "_" keeps them out of /stats, Prometheus and statsd (as in Envoy, where host
# stats only appear in /clusters).
HOST_STAT_PREFIX: str = "_host."


def host_stat_name(cluster: str, address: str, stat: str) -> str:
    """The segment name of one per-host stat (for the workers that count them)."""
    return f"{HOST_STAT_PREFIX}{cluster}.{address}.{stat}"


def host_stats(snapshot: Snapshot, cluster: str, address: str) -> dict[str, int]:
    """``HostInfo`` keyword arguments for the host's stats found in ``snapshot`` (0 if absent)."""
    out: dict[str, int] = {}
    for stat in HOST_COUNTERS:
        out[stat] = snapshot.counters.get(host_stat_name(cluster, address, stat), 0)
    for stat in HOST_GAUGES:
        out[stat] = snapshot.gauges.get(host_stat_name(cluster, address, stat), 0)
    return out


@dataclass(frozen=True, slots=True)
class CircuitBreakerThresholds:
    """One priority's circuit-breaker limits (Envoy's defaults)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """One cluster for ``/clusters``: its limits and its hosts."""

    name: str
    observability_name: str = ""  # the stat name (alt_stat_name or name); defaults to name
    hosts: tuple[HostInfo, ...] = ()
    default_priority: CircuitBreakerThresholds = field(default_factory=CircuitBreakerThresholds)
    high_priority: CircuitBreakerThresholds = field(default_factory=CircuitBreakerThresholds)
    added_via_api: bool = False


class AdminContext(Protocol):
    """The main process as the admin endpoint sees it (see the module docstring)."""

    def snapshot(self) -> Snapshot:
        """Stats of every process (live workers, exited ones, the main process), merged."""
        ...

    def server_info(self) -> dict[str, object]:
        """``/server_info``: ``version``, ``state`` (a ``ServerState`` name), ``hot_restart_version``,
        ``command_line_options`` (dict), ``uptime_current_epoch`` and ``uptime_all_epochs``
        (Envoy's ``"123s"`` strings) and ``node`` (dict). JSON-serialisable."""
        ...

    def clusters(self) -> list[ClusterInfo]:
        """Every cluster, in config order."""
        ...

    def listeners(self) -> list[tuple[str, str]]:
        """``(listener name, "ip:port")`` per listening socket, ephemeral ports resolved."""
        ...

    def config_dump(self) -> dict[str, object]:
        """``/config_dump``: the effective configuration as JSON-serialisable data."""
        ...

    def healthcheck_fail(self) -> None:
        """``/healthcheck/fail``: state DRAINING, ``server.live`` 0, DEFAULT listeners drain."""
        ...

    def healthcheck_ok(self) -> None:
        """``/healthcheck/ok``: undo ``healthcheck_fail``."""
        ...

    def drain_listeners(self, graceful: bool, inbound_only: bool) -> None:
        """``/drain_listeners``: stop listeners (after a drain period if ``graceful``);
        ``inbound_only`` limits it to listeners with ``traffic_direction: INBOUND``."""
        ...

    def quit(self) -> None:
        """``/quitquitquit``: clean exit. Called after the ``OK`` response was written."""
        ...

    def hot_restart_version(self) -> str:
        """The hot-restart compatibility string."""
        ...
