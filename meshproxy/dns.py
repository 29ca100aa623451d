"""DNS for STRICT_DNS clusters, done once per host by the main process.

Every address a name resolves to becomes a host (Envoy's STRICT_DNS). Results are
pushed to the workers; a failed refresh keeps the previous hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from meshproxy.config.model import Cluster, DnsLookupFamily

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
