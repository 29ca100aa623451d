"""DNS for STRICT_DNS clusters, done once per host by the main process.

Every address a name resolves to becomes a host (Envoy's STRICT_DNS). Results are
pushed to the workers; a failed refresh keeps the previous hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from meshproxy.config.model import Cluster, DiscoveryType, DnsLookupFamily

if TYPE_CHECKING:
    from meshproxy.main_stats import MainStats

log = logging.getLogger("meshproxy.main")

HostTuple = tuple[str, int, int, int]  # address, port, weight, priority


def _families(family: DnsLookupFamily) -> int:
    if family is DnsLookupFamily.V4_ONLY:
        return socket.AF_INET
    if family is DnsLookupFamily.V6_ONLY:
        return socket.AF_INET6
    return socket.AF_UNSPEC


def _order(family: DnsLookupFamily, addresses: list[str]) -> list[str]:
    """AUTO prefers v6 then falls back to v4; V4_PREFERRED the other way round; ALL keeps both."""
    v4 = [a for a in addresses if ":" not in a]
    v6 = [a for a in addresses if ":" in a]
    if family is DnsLookupFamily.AUTO:
        return v6 or v4
    if family is DnsLookupFamily.V4_PREFERRED:
        return v4 or v6
    return addresses


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def resolve_cluster(loop: asyncio.AbstractEventLoop, cluster: Cluster) -> list[HostTuple]:
    """Resolve every endpoint of a STRICT_DNS cluster; raises OSError if any name fails."""
    hosts: list[HostTuple] = []
    for endpoint in cluster.endpoints:
        name = endpoint.address.address
        port = endpoint.address.port_value
        if _is_ip(name):
            addresses = [name]
        else:
            infos = await loop.getaddrinfo(name, port, family=_families(cluster.dns_lookup_family),
                                           type=socket.SOCK_STREAM)
            seen: dict[str, None] = {}
            for info in infos:
                seen.setdefault(str(info[4][0]), None)
            addresses = _order(cluster.dns_lookup_family, list(seen))
        for address in addresses:
            hosts.append((address, port, endpoint.load_balancing_weight, endpoint.priority))
    return hosts


class ClusterResolver:
    """The main process's DNS: resolves every STRICT_DNS cluster, then re-resolves each one
    every ``dns_refresh_rate`` and reports changed host sets to ``on_change(name, hosts)``.

    ``resolved`` holds the latest hosts per cluster (clusters whose first lookup failed map
    to an empty list until one succeeds).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, clusters: Sequence[Cluster], stats: MainStats,
                 on_change: Callable[[str, list[HostTuple]], None]) -> None:
        self.loop = loop
        self.clusters = [c for c in clusters if c.type is DiscoveryType.STRICT_DNS]
        self.stats = stats
        self.on_change = on_change
        self.resolved: dict[str, list[HostTuple]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def resolve_all(self) -> None:
        """The first lookup of every cluster (readiness waits for it)."""
        for cluster in self.clusters:
            block = self.stats.clusters[cluster.name]
            block.update_attempt.inc()
            try:
                self.resolved[cluster.name] = await resolve_cluster(self.loop, cluster)
                block.update_success.inc()
            except OSError as exc:
                block.update_failure.inc()
                log.warning("cluster '%s': DNS resolution failed: %s", cluster.name, exc)
                self.resolved.setdefault(cluster.name, [])

    def start_refreshing(self) -> None:
        self._tasks = [self.loop.create_task(self._refresh(cluster)) for cluster in self.clusters]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def _refresh(self, cluster: Cluster) -> None:
        name = cluster.name
        while True:
            await asyncio.sleep(cluster.dns_refresh_rate)
            block = self.stats.clusters[name]
            block.update_attempt.inc()
            try:
                hosts = await resolve_cluster(self.loop, cluster)
                block.update_success.inc()
            except OSError as exc:
                block.update_failure.inc()
                log.warning("cluster '%s': DNS refresh failed, keeping %d hosts: %s", name,
                            len(self.resolved.get(name, [])), exc)
                continue
            if hosts != self.resolved.get(name):
                log.info("cluster '%s': hosts changed to %s", name, [f"{h[0]}:{h[1]}" for h in hosts])
                self.resolved[name] = hosts
                block.membership_change.inc()
                self.on_change(name, hosts)
