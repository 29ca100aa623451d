"""tcp_proxy configuration: ``envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class TcpProxyConfig:
    """The compiled tcp_proxy config. Exactly one of ``cluster`` / ``weighted_clusters`` is set."""

    stat_prefix: str
    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    idle_timeout: float | None = 3600.0  # None: disabled (``0s`` in YAML)
    max_connect_attempts: int = 1
    max_downstream_connection_duration: float | None = None

    def cluster_names(self) -> tuple[str, ...]:
        if self.cluster is not None:
            return (self.cluster,)
        return tuple(w.name for w in self.weighted_clusters)
