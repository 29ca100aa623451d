"""The compiled configuration: plain, frozen, slotted objects holding tuples.

The YAML is validated once (``meshproxy.config.compile``) and turned into these
objects; nothing on the data path parses or looks anything up by string. Durations
are float seconds. Field names follow Envoy's v3 protos where there is one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """``socket_address{address, port_value}``; ``address`` may be a hostname for DNS clusters."""

    address: str
    port_value: int

    def __str__(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port_value}"
        return f"{self.address}:{self.port_value}"


class DiscoveryType(enum.Enum):
    STATIC = "STATIC"
    STRICT_DNS = "STRICT_DNS"


class LbPolicy(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


class DnsLookupFamily(enum.Enum):
    AUTO = "AUTO"
    V4_ONLY = "V4_ONLY"
    V6_ONLY = "V6_ONLY"
    V4_PREFERRED = "V4_PREFERRED"
    ALL = "ALL"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``lb_endpoints[]`` entry: its address, weight and locality priority."""

    address: SocketAddress
    load_balancing_weight: int = 1
    priority: int = 0
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class RingHashLbConfig:
    minimum_ring_size: int = 1024
    maximum_ring_size: int = 8 * 1024 * 1024
    hash_function: str = "XX_HASH"


@dataclass(frozen=True, slots=True)
class MaglevLbConfig:
    table_size: int = 65537


@dataclass(frozen=True, slots=True)
class LeastRequestLbConfig:
    choice_count: int = 2


@dataclass(frozen=True, slots=True)
class Cluster:
    """``config.cluster.v3.Cluster`` (the implemented subset)."""

    name: str
    type: DiscoveryType = DiscoveryType.STATIC
    connect_timeout: float = 5.0
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    endpoints: tuple[Endpoint, ...] = ()
    dns_refresh_rate: float = 5.0
    dns_lookup_family: DnsLookupFamily = DnsLookupFamily.AUTO
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    ring_hash_lb_config: RingHashLbConfig = field(default_factory=RingHashLbConfig)
    maglev_lb_config: MaglevLbConfig = field(default_factory=MaglevLbConfig)
    least_request_lb_config: LeastRequestLbConfig = field(default_factory=LeastRequestLbConfig)
    # Stat root is cluster.<stat_name>.; alt_stat_name replaces the name when set.
    alt_stat_name: str = ""
    # typed_extension_protocol_options, each compiled by the filter that owns the key
    # (e.g. "envoy.filters.network.redis_proxy" -> RedisProtocolOptions config).
    protocol_options: tuple[tuple[str, Any], ...] = ()

    @property
    def stat_name(self) -> str:
        return self.alt_stat_name or self.name


@dataclass(frozen=True, slots=True)
class NetworkFilterConfig:
    """One ``filters[]`` entry: the extension name, its type URL and its compiled config."""

    name: str
    type_url: str
    config: Any
    terminal: bool


@dataclass(frozen=True, slots=True)
class FilterChain:
    filters: tuple[NetworkFilterConfig, ...]
    name: str = ""


class DrainType(enum.Enum):
    DEFAULT = "DEFAULT"
    MODIFY_ONLY = "MODIFY_ONLY"


class TrafficDirection(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"


@dataclass(frozen=True, slots=True)
class Listener:
    """``config.listener.v3.Listener``: one address, one filter chain."""

    name: str
    address: SocketAddress
    filter_chain: FilterChain
    stat_prefix: str = ""
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    enable_reuse_port: bool = True
    tcp_backlog_size: int = 1024
    drain_type: DrainType = DrainType.DEFAULT
    traffic_direction: TrafficDirection = TrafficDirection.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class Admin:
    address: SocketAddress
    access_log_path: str = ""


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    id: str = ""
    cluster: str = ""
    locality: Locality = field(default_factory=Locality)


@dataclass(frozen=True, slots=True)
class StatsdSink:
    """``envoy.stat_sinks.statsd`` over UDP."""

    address: SocketAddress
    prefix: str = "envoy"


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """``type.matcher.v3.StringMatcher``: exactly one of the fields is set."""

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    safe_regex: str | None = None
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class StatsMatcher:
    """``stats_matcher``: reject_all, or an inclusion or an exclusion list."""

    reject_all: bool = False
    inclusion_list: tuple[StringMatcher, ...] | None = None
    exclusion_list: tuple[StringMatcher, ...] | None = None


@dataclass(frozen=True, slots=True)
class StatsConfig:
    stats_matcher: StatsMatcher | None = None
    use_all_default_tags: bool = True


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """The whole compiled configuration of one meshproxy instance."""

    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    admin: Admin | None = None
    node: Node = field(default_factory=Node)
    stats_flush_interval: float = 5.0
    stats_sinks: tuple[StatsdSink, ...] = ()
    stats_config: StatsConfig = field(default_factory=StatsConfig)
    # The files the config was read from, and the merged YAML (for /config_dump).
    source_files: tuple[str, ...] = ()
    raw: Any = None

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None
