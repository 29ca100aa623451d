"""tcp_proxy configuration: ``envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy``.

``parse`` turns the ``typed_config`` mapping into a frozen ``TcpProxyConfig`` once, at
config load (envoy-subset.md section 5.1). Errors go to the ``ParseContext``, which is
positioned at the typed_config's YAML path; the named clusters are checked once every
cluster is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from filters.config_schema import (
    Message,
    Oneof,
    ParseContext,
    as_dict,
    cluster_ref,
    duration,
    integer,
    message,
    repeated,
    string,
    unsupported,
)


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


_CLUSTER_WEIGHT: Message[WeightedCluster] = Message(
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
    fields={"name": cluster_ref(required=True), "weight": integer(None, minimum=1, required=True)},
    build=lambda f, ctx, path: WeightedCluster(f["name"], f["weight"]),
    unsupported=unsupported("metadata_match"),
)

_WEIGHTED_CLUSTER: Message[dict[str, Any]] = Message(
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
    fields={"clusters": repeated(_CLUSTER_WEIGHT, min_items=1)},
    build=as_dict,
)


def _build(f: dict[str, Any], ctx: ParseContext, path: str) -> TcpProxyConfig:
    weighted = f["weighted_clusters"]
    return TcpProxyConfig(
        stat_prefix=f["stat_prefix"],
        cluster=f["cluster"],
        weighted_clusters=weighted["clusters"] if weighted else (),
        # Envoy: a zero duration disables the timer.
        idle_timeout=f["idle_timeout"] or None,
        max_connect_attempts=f["max_connect_attempts"],
        max_downstream_connection_duration=f["max_downstream_connection_duration"] or None,
    )


TCP_PROXY: Message[TcpProxyConfig] = Message(
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    fields={
        "stat_prefix": string(required=True, min_len=1),
        "cluster": cluster_ref(),
        "weighted_clusters": message(_WEIGHTED_CLUSTER),
        "idle_timeout": duration(3600.0),
        "max_connect_attempts": integer(1, minimum=1),
        "max_downstream_connection_duration": duration(None),
    },
    oneofs=(Oneof(("cluster", "weighted_clusters"), required=True),),
    unsupported=unsupported(
        "on_demand", "metadata_match", "downstream_idle_timeout", "upstream_idle_timeout",
        "access_log", "access_log_options", "access_log_flush_interval", "flush_access_log_on_connected",
        "backoff_options", "hash_policy", "tunneling_config", "proxy_protocol_tlvs",
        "max_downstream_connection_duration_jitter_percentage",
    ),
    build=_build,
)


def parse(typed_config: dict[str, Any], ctx: ParseContext) -> TcpProxyConfig | None:
    """Compile a tcp_proxy ``typed_config`` (without ``@type``); None if it had errors."""
    return TCP_PROXY.parse(typed_config, ctx)
