"""Upstream clusters as a worker sees them: a host set and a load balancer.

Each worker holds its own ``ClusterManager`` built from the compiled config. Host sets
of STRICT_DNS clusters are resolved by the main process (once per host, not once per
worker) and pushed to every worker over its control channel (``update_hosts``).

Load balancing follows Envoy's semantics (envoy-subset.md §7):
* ROUND_ROBIN: plain rotation; unequal weights use smooth weighted round robin.
* RANDOM: uniform, or weighted when weights differ.
* LEAST_REQUEST: the power of ``choice_count`` random choices on active requests
  (an active tcp_proxy connection counts as one), divided by weight.
* RING_HASH / MAGLEV: consistent hashing on a key (``choose_host(hash_key)``); with no
  key (tcp_proxy without a hash policy) a random host, as Envoy does.

Priorities: with no health checking every host is healthy, so priority 0 takes all
traffic; the lowest priority present is used when there is no priority-0 host.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from meshproxy.config.model import Cluster, Endpoint, LbPolicy
from stats_shm import StatBlock
from workers.stat_names import ClusterStats, sanitize


class HostStats(StatBlock):
    """Per-host figures for ``/clusters``; internal names (``_host.<cluster>.<ip_port>.*``)."""

    COUNTERS = ("cx_total", "cx_connect_fail", "rq_total", "rq_timeout", "rq_success", "rq_error")
    GAUGES = ("cx_active", "rq_active")


def host_stat_prefix(cluster_stat_name: str, address: str, port: int) -> str:
    return f"_host.{sanitize(cluster_stat_name)}.{sanitize(f'{address}:{port}')}."


class Host:
    """One upstream endpoint. ``rq_active`` is this worker's own count (for LEAST_REQUEST)."""

    __slots__ = ("address", "port", "rq_active", "stats", "weight")

    def __init__(self, address: str, port: int, weight: int, stats: HostStats) -> None:
        self.address = address
        self.port = port
        self.weight = weight
        self.stats = stats
        self.rq_active = 0

    @property
    def key(self) -> str:
        """``ip:port``, the host's identity in hashing and in ``/clusters``."""
        return f"{self.address}:{self.port}"

    def __repr__(self) -> str:
        return f"Host({self.key}, weight={self.weight})"


class LoadBalancer:
    """Picks a host from a fixed host list; rebuilt whenever the host set changes."""

    def __init__(self, hosts: Sequence[Host]) -> None:
        self.hosts = tuple(hosts)

    def choose(self, hash_key: int | None = None) -> Host | None:
        raise NotImplementedError


class RoundRobin(LoadBalancer):
    def __init__(self, hosts: Sequence[Host]) -> None:
        super().__init__(hosts)
        self._next = random.randrange(len(self.hosts)) if self.hosts else 0
        self._weighted = len({h.weight for h in self.hosts}) > 1
        self._current = [0] * len(self.hosts)
        self._total = sum(h.weight for h in self.hosts)

    def choose(self, hash_key: int | None = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if not self._weighted:
            i = self._next
            self._next = (i + 1) % len(hosts)
            return hosts[i]
        # Smooth weighted round robin (as nginx): spreads a heavy host's turns out.
        current = self._current
        best = 0
        for i, h in enumerate(hosts):
            current[i] += h.weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return hosts[best]


class Random(LoadBalancer):
    def __init__(self, hosts: Sequence[Host]) -> None:
        super().__init__(hosts)
        self._weights = [h.weight for h in self.hosts] if len({h.weight for h in self.hosts}) > 1 else None

    def choose(self, hash_key: int | None = None) -> Host | None:
        if not self.hosts:
            return None
        if self._weights is None:
            return random.choice(self.hosts)
        return random.choices(self.hosts, self._weights)[0]


class LeastRequest(LoadBalancer):
    def __init__(self, hosts: Sequence[Host], choice_count: int = 2) -> None:
        super().__init__(hosts)
        self._choices = max(1, choice_count)

    def choose(self, hash_key: int | None = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if len(hosts) == 1:
            return hosts[0]
        best = random.choice(hosts)
        for _ in range(self._choices - 1):
            other = random.choice(hosts)
            if other.rq_active / other.weight < best.rq_active / best.weight:
                best = other
        return best


class ConsistentHash(LoadBalancer):
    """RING_HASH or MAGLEV over the host keys; Envoy-identical placement (filters.hashing)."""

    def __init__(self, hosts: Sequence[Host], cluster: Cluster) -> None:
        super().__init__(hosts)
        from filters import hashing  # deferred: only hashed clusters pay for the table build

        pairs = [(h.key, h.weight) for h in self.hosts]
        if not pairs:
            self._table: Any = None
        elif cluster.lb_policy is LbPolicy.MAGLEV:
            self._table = hashing.Maglev(pairs, table_size=cluster.maglev_lb_config.table_size)
        else:
            cfg = cluster.ring_hash_lb_config
            self._table = hashing.RingHash(
                pairs,
                minimum_ring_size=cfg.minimum_ring_size,
                maximum_ring_size=cfg.maximum_ring_size,
                hash_function=cfg.hash_function,
            )

    def choose(self, hash_key: int | None = None) -> Host | None:
        if not self.hosts:
            return None
        if hash_key is None:
            return random.choice(self.hosts)
        return self.hosts[self._table.pick(hash_key)]


def make_load_balancer(cluster: Cluster, hosts: Sequence[Host]) -> LoadBalancer:
    policy = cluster.lb_policy
    if policy is LbPolicy.ROUND_ROBIN:
        return RoundRobin(hosts)
    if policy is LbPolicy.RANDOM:
        return Random(hosts)
    if policy is LbPolicy.LEAST_REQUEST:
        return LeastRequest(hosts, cluster.least_request_lb_config.choice_count)
    return ConsistentHash(hosts, cluster)


class ClusterRuntime:
    """A cluster in one worker: its config, current hosts, balancer and stat block."""

    def __init__(self, config: Cluster, stats_store: Any,
                 endpoints: Iterable[tuple[str, int, int, int]]) -> None:
        self.config = config
        self.name = config.name
        self.connect_timeout = config.connect_timeout
        self.stats_store = stats_store
        self.stats = ClusterStats(stats_store, f"cluster.{sanitize(config.stat_name)}.")
        self.hosts: tuple[Host, ...] = ()
        self.lb: LoadBalancer = make_load_balancer(config, ())
        self.update_hosts(endpoints)

    def update_hosts(self, endpoints: Iterable[tuple[str, int, int, int]]) -> None:
        """Replace the host set with (address, port, weight, priority) tuples, keeping known hosts."""
        endpoints = list(endpoints)
        if endpoints:
            top = min(e[3] for e in endpoints)
            endpoints = [e for e in endpoints if e[3] == top]
        known = {(h.address, h.port): h for h in self.hosts}
        hosts = []
        for address, port, weight, _priority in endpoints:
            host = known.get((address, port))
            if host is None:
                stats = HostStats(self.stats_store, host_stat_prefix(self.config.stat_name, address, port))
                host = Host(address, port, weight, stats)
            host.weight = weight
            hosts.append(host)
        self.hosts = tuple(hosts)
        self.lb = make_load_balancer(self.config, hosts)

    def choose_host(self, hash_key: int | None = None) -> Host | None:
        return self.lb.choose(hash_key)


def static_endpoints(cluster: Cluster) -> list[tuple[str, int, int, int]]:
    """The host tuples of a STATIC cluster, straight from its load_assignment."""
    return [endpoint_tuple(e) for e in cluster.endpoints]


def endpoint_tuple(e: Endpoint, address: str | None = None) -> tuple[str, int, int, int]:
    return (address or e.address.address, e.address.port_value, e.load_balancing_weight, e.priority)


class ClusterManager:
    """All clusters of one worker, by name (looked up when filters are built, not per connection)."""

    def __init__(self, clusters: Sequence[Cluster], stats_store: Any,
                 resolved: dict[str, list[tuple[str, int, int, int]]]) -> None:
        self.clusters: dict[str, ClusterRuntime] = {}
        for c in clusters:
            endpoints = resolved.get(c.name)
            if endpoints is None:
                endpoints = static_endpoints(c)
            self.clusters[c.name] = ClusterRuntime(c, stats_store, endpoints)

    def get(self, name: str) -> ClusterRuntime:
        return self.clusters[name]
