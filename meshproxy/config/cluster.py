"""``config.cluster.v3.Cluster``: the implemented subset (envoy-subset.md section 7).

A cluster compiles into ``model.Cluster`` with its endpoints flattened into one tuple,
each carrying its locality's priority. Discovery is STATIC (IP literals, checked here
with ``ipaddress``) or STRICT_DNS (hostnames, resolved later by the main process; never
here). ``typed_extension_protocol_options`` entries are compiled by the filter that
registered their key with ``filters.config_schema.register_protocol_options``.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import Any

from filters.config_schema import (
    Field,
    Message,
    Oneof,
    ParseContext,
    anything,
    as_dict,
    describe,
    duration,
    enum_field,
    integer,
    join,
    lookup_protocol_options,
    message,
    message_of,
    parse_typed_config,
    repeated,
    string,
    unsupported,
)
from meshproxy.config.address import UPSTREAM_ADDRESS, is_ip_literal
from meshproxy.config.model import (
    Cluster,
    DiscoveryType,
    DnsLookupFamily,
    Endpoint,
    LbPolicy,
    LeastRequestLbConfig,
    MaglevLbConfig,
    RingHashLbConfig,
)

MAX_RING_SIZE = 8 * 1024 * 1024  # Envoy's upper bound for both ring sizes
MAX_MAGLEV_TABLE = 5_000_011  # Envoy refuses larger tables


class _HealthStatus(enum.Enum):
    # Without health checking every host is healthy; the statuses that would take a host
    # out of rotation (UNHEALTHY, DRAINING, TIMEOUT, DEGRADED) are refused, not ignored.
    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"


class _HashFunction(enum.Enum):
    XX_HASH = "XX_HASH"
    MURMUR_HASH_2 = "MURMUR_HASH_2"


_LOCALITY: Message[dict[str, Any]] = Message(
    "envoy.config.core.v3.Locality",
    fields={"region": string(), "zone": string(), "sub_zone": string()},
    build=as_dict,
)

_ENDPOINT: Message[dict[str, Any]] = Message(
    "envoy.config.endpoint.v3.Endpoint",
    fields={"address": UPSTREAM_ADDRESS, "hostname": string()},
    unsupported=unsupported("health_check_config", "additional_addresses"),
    build=as_dict,
)

_LB_ENDPOINT: Message[Endpoint] = Message(
    "envoy.config.endpoint.v3.LbEndpoint",
    fields={
        "endpoint": message(_ENDPOINT),
        "health_status": enum_field(
            _HealthStatus, _HealthStatus.UNKNOWN, envoy_only=("UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED")
        ),
        "load_balancing_weight": integer(1, minimum=1),
        "metadata": anything(),
    },
    unsupported=unsupported("endpoint_name"),
    oneofs=(Oneof(("endpoint", "endpoint_name"), required=True),),
    build=lambda f, ctx, path: Endpoint(
        address=f["endpoint"]["address"],
        load_balancing_weight=f["load_balancing_weight"],
        hostname=f["endpoint"]["hostname"],
    ),
)

_LOCALITY_LB_ENDPOINTS: Message[dict[str, Any]] = Message(
    "envoy.config.endpoint.v3.LocalityLbEndpoints",
    fields={
        "locality": message(_LOCALITY),
        "lb_endpoints": repeated(_LB_ENDPOINT),
        # Only meaningful with locality_weighted_lb_config, which is not supported: accepted, unused.
        "load_balancing_weight": integer(None, minimum=1),
        "priority": integer(0, maximum=128),
        "metadata": anything(),
    },
    unsupported=unsupported("load_balancer_endpoints", "leds_cluster_locality_config", "proximity"),
    build=as_dict,
)

_LOAD_ASSIGNMENT: Message[dict[str, Any]] = Message(
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    fields={"cluster_name": string(required=True, min_len=1), "endpoints": repeated(_LOCALITY_LB_ENDPOINTS)},
    unsupported=unsupported("named_endpoints", "policy"),
    build=as_dict,
)

def _build_ring_hash(f: dict[str, Any], ctx: ParseContext, path: str) -> RingHashLbConfig | None:
    if f["minimum_ring_size"] > f["maximum_ring_size"]:
        ctx.error(path, "minimum_ring_size must not exceed maximum_ring_size")
        return None
    return RingHashLbConfig(f["minimum_ring_size"], f["maximum_ring_size"], f["hash_function"].value)


_RING_HASH: Message[RingHashLbConfig] = Message(
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
    fields={
        "minimum_ring_size": integer(1024, minimum=1, maximum=MAX_RING_SIZE),
        "maximum_ring_size": integer(MAX_RING_SIZE, minimum=1, maximum=MAX_RING_SIZE),
        "hash_function": enum_field(_HashFunction, _HashFunction.XX_HASH),
    },
    build=_build_ring_hash,
)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _build_maglev(f: dict[str, Any], ctx: ParseContext, path: str) -> MaglevLbConfig | None:
    if not _is_prime(f["table_size"]):
        ctx.error(join(path, "table_size"), f"expected a prime number, got {f['table_size']}")
        return None
    return MaglevLbConfig(f["table_size"])


_MAGLEV: Message[MaglevLbConfig] = Message(
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
    fields={"table_size": integer(65537, minimum=2, maximum=MAX_MAGLEV_TABLE - 1)},
    build=_build_maglev,
)

_LEAST_REQUEST: Message[LeastRequestLbConfig] = Message(
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
    fields={"choice_count": integer(2, minimum=2)},
    unsupported=unsupported("active_request_bias", "slow_start_config"),
    build=lambda f, ctx, path: LeastRequestLbConfig(f["choice_count"]),
)


def _parse_protocol_options(value: object, ctx: ParseContext, path: str) -> tuple[tuple[str, object], ...]:
    """``typed_extension_protocol_options``: key (an extension name) -> typed_config."""
    if not isinstance(value, dict):
        ctx.error(path, f"expected mapping, got {describe(value)}")
        return ()
    compiled: list[tuple[str, object]] = []
    for key, typed_config in value.items():
        kpath = join(path, key)
        options = lookup_protocol_options(str(key))
        if options is None:
            ctx.error(kpath, f"protocol options for '{key}' are not supported by meshproxy")
            continue
        parsed = parse_typed_config(typed_config, ctx, kpath)
        if parsed is None:
            continue
        type_url, body = parsed
        if message_of(type_url) != options.message:
            ctx.error(join(kpath, "@type"), f"expected {options.message} for '{key}', got {type_url!r}")
            continue
        before = ctx.error_count()
        config = options.parse(body, ctx.at(kpath))
        if ctx.error_count() == before:
            compiled.append((str(key), config))
    return tuple(compiled)


def _build_cluster(f: dict[str, Any], ctx: ParseContext, path: str) -> Cluster | None:
    endpoints: list[Endpoint] = []
    ok = True
    for i, locality in enumerate(f["load_assignment"]["endpoints"]):
        for j, endpoint in enumerate(locality["lb_endpoints"]):
            if f["type"] is DiscoveryType.STATIC and not is_ip_literal(endpoint.address.address):
                lb_path = f"{path}.load_assignment.endpoints[{i}].lb_endpoints[{j}]"
                where = f"{lb_path}.endpoint.address.socket_address.address"
                ctx.error(where, f"a STATIC cluster needs IP addresses, got {endpoint.address.address!r} "
                          "(use type: STRICT_DNS for hostnames)")
                ok = False
            endpoints.append(replace(endpoint, priority=locality["priority"]))
    if not ok:
        return None
    return Cluster(
        name=f["name"],
        type=f["type"],
        connect_timeout=f["connect_timeout"],
        lb_policy=f["lb_policy"],
        endpoints=tuple(endpoints),
        dns_refresh_rate=f["dns_refresh_rate"],
        dns_lookup_family=f["dns_lookup_family"],
        per_connection_buffer_limit_bytes=f["per_connection_buffer_limit_bytes"],
        ring_hash_lb_config=f["ring_hash_lb_config"],
        maglev_lb_config=f["maglev_lb_config"],
        least_request_lb_config=f["least_request_lb_config"],
        alt_stat_name=f["alt_stat_name"],
        protocol_options=f["typed_extension_protocol_options"],
    )


CLUSTER: Message[Cluster] = Message(
    "envoy.config.cluster.v3.Cluster",
    fields={
        "name": string(required=True, min_len=1),
        "alt_stat_name": string(),
        "type": enum_field(
            DiscoveryType, DiscoveryType.STATIC, envoy_only=("LOGICAL_DNS", "EDS", "ORIGINAL_DST")
        ),
        "connect_timeout": duration(5.0, gt=0),
        "per_connection_buffer_limit_bytes": integer(1024 * 1024),
        "lb_policy": enum_field(
            LbPolicy, LbPolicy.ROUND_ROBIN, envoy_only=("CLUSTER_PROVIDED", "LOAD_BALANCING_POLICY_CONFIG")
        ),
        "load_assignment": message(_LOAD_ASSIGNMENT, required=True),
        "dns_refresh_rate": duration(5.0, gt=0.001),
        "dns_lookup_family": enum_field(DnsLookupFamily, DnsLookupFamily.AUTO),
        "ring_hash_lb_config": message(_RING_HASH, default=RingHashLbConfig()),
        "maglev_lb_config": message(_MAGLEV, default=MaglevLbConfig()),
        "least_request_lb_config": message(_LEAST_REQUEST, default=LeastRequestLbConfig()),
        "typed_extension_protocol_options": Field(_parse_protocol_options, ()),
        "metadata": anything(),
    },
    unsupported=unsupported(
        "transport_socket_matches", "cluster_type", "eds_cluster_config", "health_checks",
        "max_requests_per_connection", "circuit_breakers", "upstream_http_protocol_options",
        "common_http_protocol_options", "http_protocol_options", "http2_protocol_options",
        "dns_jitter", "dns_failure_refresh_rate", "respect_dns_ttl", "dns_resolvers",
        "use_tcp_for_dns_lookups", "dns_resolution_config", "typed_dns_resolver_config",
        "wait_for_warm_on_init", "outlier_detection", "cleanup_interval", "upstream_bind_config",
        "lb_subset_config", "original_dst_lb_config", "round_robin_lb_config", "common_lb_config",
        "transport_socket", "protocol_selection", "upstream_connection_options",
        "close_connections_on_host_health_failure", "ignore_health_on_host_removal", "filters",
        "load_balancing_policy", "lrs_server", "lrs_report_endpoint_metrics", "track_timeout_budgets",
        "upstream_config", "track_cluster_stats", "preconnect_policy",
        "connection_pool_per_downstream_connection",
    ),
    removed={
        "hosts": "use load_assignment",
        "tls_context": "use transport_socket",
        "extension_protocol_options": "use typed_extension_protocol_options",
    },
    oneofs=(Oneof(("type", "cluster_type")),),
    build=_build_cluster,
)


def parse_clusters(value: object, ctx: ParseContext, path: str) -> tuple[Cluster, ...]:
    """``static_resources.clusters``: declares every name first, so references resolve even
    when a cluster has other errors, and reports duplicate names with both locations."""
    if not isinstance(value, list):
        ctx.error(path, f"expected list, got {describe(value)}")
        ctx.clusters_unreadable()
        return ()
    first_seen: dict[str, str] = {}
    for i, raw in enumerate(value):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            ctx.clusters_unreadable()  # the cluster's own parse reports why
            continue
        npath = f"{path}[{i}].name"
        if name in first_seen:
            first = ctx.where(first_seen[name])
            ctx.error(npath, f"duplicate cluster name '{name}' (first defined at {first})")
        else:
            first_seen[name] = f"{path}[{i}]"
            ctx.declare_cluster(name)
    clusters = (CLUSTER.parse(raw, ctx, f"{path}[{i}]") for i, raw in enumerate(value))
    return tuple(c for c in clusters if c is not None)
