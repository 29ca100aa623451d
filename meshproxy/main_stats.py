"""Stats kept by the main process: ``server.*``, ``listener_manager.*``, ``cluster_manager.*``
and each cluster's membership and DNS figures (envoy-subset.md §4, §7.1).

Workers count the data path; these are the figures only the main process knows. They
are refreshed when read (admin, stats flush) and once a second for uptime.
"""

from __future__ import annotations

import os
import time

from meshproxy import __version__
from meshproxy.config.model import Bootstrap
from stats_shm import Snapshot, StatBlock, StatsStore, sanitize
from workers.listener import listener_stat_root

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ServerStats(StatBlock):
    COUNTERS = ("worker_restarts", "hot_restart_successes", "hot_restart_failures",
                "debug_assertion_failures", "envoy_bug_failures", "static_unknown_fields",
                "dynamic_unknown_fields")
    GAUGES = ("uptime", "concurrency", "live", "state", "version", "hot_restart_epoch",
              "hot_restart_generation", "total_connections", "parent_connections", "memory_allocated",
              "memory_heap_size", "memory_physical_size", "days_until_first_cert_expiring")
    HISTOGRAMS = ("initialization_time_ms",)


class ListenerManagerStats(StatBlock):
    COUNTERS = ("listener_added", "listener_modified", "listener_removed", "listener_stopped",
                "listener_create_success", "listener_create_failure", "listener_in_place_updated")
    GAUGES = ("total_filter_chains_draining", "total_listeners_warming", "total_listeners_active",
              "total_listeners_draining", "workers_started")


class ClusterManagerStats(StatBlock):
    COUNTERS = ("cluster_added", "cluster_modified", "cluster_removed", "cluster_updated",
                "cluster_updated_via_merge", "update_merge_cancelled", "update_out_of_merge_window")
    GAUGES = ("active_clusters", "warming_clusters")


class ClusterMembershipStats(StatBlock):
    COUNTERS = ("membership_change", "update_attempt", "update_success", "update_failure", "update_empty",
                "update_no_rebuild")
    GAUGES = ("membership_total", "membership_healthy", "membership_degraded", "membership_excluded",
              "max_host_weight")


# server.state values (Envoy's enum).
STATE_LIVE, STATE_DRAINING, STATE_PRE_INITIALIZING, STATE_INITIALIZING = 0, 1, 2, 3
STATE_NAMES = {STATE_LIVE: "LIVE", STATE_DRAINING: "DRAINING", STATE_PRE_INITIALIZING: "PRE_INITIALIZING",
               STATE_INITIALIZING: "INITIALIZING"}


def version_number(version: str = __version__) -> int:
    """``server.version`` is an integer in Envoy (the SCM revision); ours is MMmmpp, e.g. 0.1.0 -> 100."""
    parts = [int(p) for p in version.split(".")[:3] if p.isdigit()] + [0, 0, 0]
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


class MainStats:
    """The main process's stat blocks, bound once at start."""

    def __init__(self, store: StatsStore, bootstrap: Bootstrap, concurrency: int, epoch: int) -> None:
        self.server = ServerStats(store, "server.")
        self.listener_manager = ListenerManagerStats(store, "listener_manager.")
        self.cluster_manager = ClusterManagerStats(store, "cluster_manager.")
        self.clusters = {c.name: ClusterMembershipStats(store, f"cluster.{sanitize(c.stat_name)}.")
                         for c in bootstrap.clusters}
        self.active_gauges = tuple(listener_stat_root(lst) + "downstream_cx_active"
                                   for lst in bootstrap.listeners)
        self.started = time.monotonic()
        s = self.server
        s.concurrency.set(concurrency)
        s.version.set(version_number())
        s.hot_restart_epoch.set(epoch)
        s.hot_restart_generation.set(epoch)
        self.retired = False
        s.live.set(1)
        s.state.set(STATE_LIVE)
        self.listener_manager.listener_added.inc(len(bootstrap.listeners))
        self.listener_manager.listener_create_success.inc(len(bootstrap.listeners) * concurrency)
        self.listener_manager.total_listeners_active.set(len(bootstrap.listeners))
        self.cluster_manager.cluster_added.inc(len(bootstrap.clusters))
        self.cluster_manager.active_clusters.set(len(bootstrap.clusters))

    def set_hosts(self, cluster: str, hosts: list[tuple[str, int, int, int]]) -> None:
        block = self.clusters[cluster]
        block.membership_total.set(len(hosts))
        block.membership_healthy.set(len(hosts))
        block.max_host_weight.set(max((h[2] for h in hosts), default=0))

    def retire(self) -> None:
        """A newer generation took over: our per-generation gauges stop counting (they would
        add up with the new generation's), while counters keep their history."""
        s = self.server
        for gauge in (s.concurrency, s.live, s.state, s.version, s.hot_restart_epoch,
                      s.hot_restart_generation, s.uptime, s.total_connections, s.memory_allocated,
                      s.memory_physical_size):
            gauge.set(0)
        lm = self.listener_manager
        lm.total_listeners_active.set(0)
        lm.workers_started.set(0)
        self.cluster_manager.active_clusters.set(0)
        for block in self.clusters.values():
            block.membership_total.set(0)
            block.membership_healthy.set(0)
            block.max_host_weight.set(0)
        self.retired = True

    def tick(self) -> None:
        self.server.uptime.set(int(time.monotonic() - self.started))

    def refresh(self, snapshot: Snapshot | None, pids: list[int]) -> None:
        """Figures computed from other processes: connections (from the snapshot) and memory."""
        self.tick()
        if snapshot is not None:
            gauges = snapshot.gauges
            self.server.total_connections.set(sum(gauges.get(name, 0) for name in self.active_gauges))
        memory = sum(rss_bytes(pid) for pid in pids)
        self.server.memory_allocated.set(memory)
        self.server.memory_physical_size.set(memory)
