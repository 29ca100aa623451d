"""The main process as the admin endpoint sees it (``meshproxy.admin.AdminContext``).

Kept apart from ``server.py`` so that the process supervision code stays short: this
module only reads the main process's state and turns admin actions into calls on it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from meshproxy import __version__
from meshproxy.admin import AdminContext, ClusterInfo, HostInfo
from meshproxy.main_stats import STATE_NAMES
from stats_shm import Snapshot
from stats_shm.layout import LAYOUT_VERSION
from workers.cluster import host_stat_prefix, static_endpoints

if TYPE_CHECKING:
    from meshproxy.server import MainProcess

# Bumped whenever the hot-restart handshake changes; the stats layout version follows it,
# so two builds can hot restart into each other only when both match (as Envoy's string).
HOT_RESTART_PROTOCOL = 1
HOST_COUNTERS = ("cx_total", "cx_connect_fail", "rq_total", "rq_timeout", "rq_success", "rq_error")
HOST_GAUGES = ("cx_active", "rq_active")


def hot_restart_version() -> str:
    return f"{HOT_RESTART_PROTOCOL}.{LAYOUT_VERSION}"


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s"


class MainAdmin(AdminContext):
    """Answers the admin endpoint from a ``MainProcess``."""

    def __init__(self, main: MainProcess) -> None:
        self.main = main

    def snapshot(self) -> Snapshot:
        main = self.main
        snapshot = main.backend.segment.snapshot(timeout=1.0)
        main.stats.refresh(snapshot, main.process_pids())
        return main.backend.segment.snapshot(timeout=1.0)

    def server_info(self) -> dict[str, object]:
        main = self.main
        node = main.bootstrap.node
        now = time.time()
        return {
            "version": f"meshproxy/{__version__}",
            "state": STATE_NAMES[main.server_state],
            "hot_restart_version": hot_restart_version(),
            "command_line_options": main.options.command_line_options(),
            "uptime_current_epoch": _duration(now - main.started_at),
            "uptime_all_epochs": _duration(now - main.first_started_at),
            "hot_restart_epoch": main.epoch,
            "last_hot_restart": main.reloader.last_result,
            "node": {"id": node.id, "cluster": node.cluster,
                     "locality": {"region": node.locality.region, "zone": node.locality.zone,
                                  "sub_zone": node.locality.sub_zone}},
        }

    def clusters(self) -> list[ClusterInfo]:
        main = self.main
        snapshot = main.backend.segment.snapshot(timeout=1.0)
        counters, gauges = snapshot.counters, snapshot.gauges
        out = []
        for cluster in main.bootstrap.clusters:
            hostnames = {(e.address.address, e.address.port_value): e.hostname for e in cluster.endpoints}
            hosts = []
            endpoints = main.dns.resolved.get(cluster.name) or static_endpoints(cluster)
            for address, port, weight, priority in endpoints:
                prefix = host_stat_prefix(cluster.stat_name, address, port)
                figures = {k: counters.get(prefix + k, 0) for k in HOST_COUNTERS}
                figures.update({k: gauges.get(prefix + k, 0) for k in HOST_GAUGES})
                shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
                hosts.append(HostInfo(address=shown, weight=weight, priority=priority,
                                      hostname=hostnames.get((address, port), ""), **figures))
            out.append(ClusterInfo(name=cluster.name, observability_name=cluster.stat_name,
                                   hosts=tuple(hosts)))
        return out

    def listeners(self) -> list[tuple[str, str]]:
        out = []
        for listener in self.main.bootstrap.listeners:
            socks = self.main.sockets.get(listener.name)
            port = socks[0].getsockname()[1] if socks else listener.address.port_value
            address = listener.address.address
            out.append((listener.name, f"[{address}]:{port}" if ":" in address else f"{address}:{port}"))
        return out

    def config_dump(self) -> dict[str, object]:
        return {"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "bootstrap": self.main.bootstrap.raw,
            "last_updated": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.main.started_at)),
        }]}

    def healthcheck_fail(self) -> None:
        self.main.set_health_failed(True)

    def healthcheck_ok(self) -> None:
        self.main.set_health_failed(False)

    def drain_listeners(self, graceful: bool, inbound_only: bool) -> None:
        self.main.drain_listeners(graceful, inbound_only)

    def quit(self) -> None:
        self.main.shutdown()

    def hot_restart_version(self) -> str:
        return hot_restart_version()
