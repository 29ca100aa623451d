"""``config.bootstrap.v3.Bootstrap``: the top of the config tree (envoy-subset.md sections 1, 11).

``compile_bootstrap`` checks a merged YAML document against the schemas below (and the
listener and cluster schemas) and returns a ``model.Bootstrap``, or None after reporting
every error to the context. Cross-references (a filter naming a cluster) are checked at
the end, once every cluster name is known.

Implemented: ``node``, ``static_resources{listeners, clusters}``, ``admin``,
``stats_flush_interval``, ``stats_sinks`` (statsd over UDP) and ``stats_config`` (the stats
matcher). Everything else Envoy knows is refused by name as not supported.
"""

from __future__ import annotations

import re
from typing import Any

from filters.config_schema import (
    Field,
    Message,
    Oneof,
    ParseContext,
    anything,
    as_dict,
    boolean,
    duration,
    join,
    message,
    message_of,
    parse_typed_config,
    repeated,
    string,
    unsupported,
)
from meshproxy.config.address import address_field
from meshproxy.config.cluster import parse_clusters
from meshproxy.config.listener import parse_listeners
from meshproxy.config.model import (
    Admin,
    Bootstrap,
    Locality,
    Node,
    StatsConfig,
    StatsdSink,
    StatsMatcher,
    StringMatcher,
)

STATSD_SINK_NAME = "envoy.stat_sinks.statsd"
STATSD_SINK_MESSAGE = "envoy.config.metrics.v3.StatsdSink"

_LOCALITY: Message[Locality] = Message(
    "envoy.config.core.v3.Locality",
    fields={"region": string(), "zone": string(), "sub_zone": string()},
    build=lambda f, ctx, path: Locality(f["region"], f["zone"], f["sub_zone"]),
)

_NODE: Message[Node] = Message(
    "envoy.config.core.v3.Node",
    fields={
        "id": string(),
        "cluster": string(),
        "locality": message(_LOCALITY, default=Locality()),
        "metadata": anything(),  # kept only in Bootstrap.raw
    },
    unsupported=unsupported(
        "dynamic_parameters", "user_agent_name", "user_agent_version", "user_agent_build_version",
        "extensions", "client_features", "listening_addresses",
    ),
    removed={"build_version": "use user_agent_version"},
    build=lambda f, ctx, path: Node(f["id"], f["cluster"], f["locality"]),
)

_ADMIN: Message[Admin] = Message(
    "envoy.config.bootstrap.v3.Admin",
    fields={"address": address_field(ip_literal=True, required=False), "access_log_path": string()},
    unsupported=unsupported(
        "access_log", "profile_path", "socket_options", "ignore_global_conn_limit", "allow_paths"
    ),
    # No address: no admin listener, as in Envoy.
    build=lambda f, ctx, path: Admin(f["address"], f["access_log_path"]) if f["address"] else None,
)

# --- stats -----------------------------------------------------------------------------------


def _build_regex(f: dict[str, Any], ctx: ParseContext, path: str) -> str | None:
    try:
        re.compile(f["regex"])
    except re.error as exc:
        ctx.error(join(path, "regex"), f"invalid regular expression: {exc}")
        return None
    return str(f["regex"])


_REGEX_MATCHER: Message[str] = Message(
    "envoy.type.matcher.v3.RegexMatcher",
    # google_re2 is deprecated and has no effect.
    fields={"regex": string(required=True, min_len=1), "google_re2": anything()},
    build=_build_regex,
)

_STRING_MATCHER: Message[StringMatcher] = Message(
    "envoy.type.matcher.v3.StringMatcher",
    fields={
        "exact": string(None),
        "prefix": string(None, min_len=1),
        "suffix": string(None, min_len=1),
        "contains": string(None, min_len=1),
        "safe_regex": message(_REGEX_MATCHER),
        "ignore_case": boolean(),
    },
    unsupported=unsupported("custom"),
    oneofs=(Oneof(("exact", "prefix", "suffix", "contains", "safe_regex", "custom"), required=True),),
    build=lambda f, ctx, path: StringMatcher(**f),
)

_LIST_STRING_MATCHER: Message[tuple[StringMatcher, ...]] = Message(
    "envoy.type.matcher.v3.ListStringMatcher",
    fields={"patterns": repeated(_STRING_MATCHER, min_items=1)},
    build=lambda f, ctx, path: f["patterns"],
)

_STATS_MATCHER: Message[StatsMatcher] = Message(
    "envoy.config.metrics.v3.StatsMatcher",
    fields={
        "reject_all": boolean(),
        "inclusion_list": message(_LIST_STRING_MATCHER),
        "exclusion_list": message(_LIST_STRING_MATCHER),
    },
    oneofs=(Oneof(("reject_all", "inclusion_list", "exclusion_list"), required=True),),
    build=lambda f, ctx, path: StatsMatcher(f["reject_all"], f["inclusion_list"], f["exclusion_list"]),
)

_STATS_CONFIG: Message[StatsConfig] = Message(
    "envoy.config.metrics.v3.StatsConfig",
    fields={"stats_matcher": message(_STATS_MATCHER), "use_all_default_tags": boolean(True)},
    unsupported=unsupported("stats_tags", "histogram_bucket_settings"),
    build=lambda f, ctx, path: StatsConfig(f["stats_matcher"], f["use_all_default_tags"]),
)

_STATSD: Message[StatsdSink] = Message(
    STATSD_SINK_MESSAGE,
    fields={
        # Envoy sends statsd over UDP whatever socket_address.protocol says.
        "address": address_field(ip_literal=True, protocols=("TCP", "UDP"), port_zero=False, required=False),
        "prefix": string("envoy"),
    },
    unsupported=unsupported("tcp_cluster_name"),
    oneofs=(Oneof(("address", "tcp_cluster_name"), required=True),),
    build=lambda f, ctx, path: StatsdSink(f["address"], f["prefix"] or "envoy"),
)


def _build_sink(f: dict[str, Any], ctx: ParseContext, path: str) -> StatsdSink | None:
    name, typed_config = f["name"], f["typed_config"]
    tc_path = join(path, "typed_config")
    if typed_config is None:
        ctx.error(path, f"stats sink '{name}' without typed_config is not supported by meshproxy "
                  f"(use {STATSD_SINK_NAME} with @type {STATSD_SINK_MESSAGE})")
        return None
    type_url, body = typed_config
    if message_of(type_url) != STATSD_SINK_MESSAGE:
        ctx.error(tc_path, f"stats sink '{name}' (@type {type_url}) is not supported by meshproxy "
                  f"(only {STATSD_SINK_NAME})")
        return None
    return _STATSD.parse(body, ctx, tc_path)


_STATS_SINK: Message[StatsdSink] = Message(
    "envoy.config.metrics.v3.StatsSink",
    fields={"name": string(), "typed_config": Field(parse_typed_config)},
    build=_build_sink,
)

# --- the bootstrap ---------------------------------------------------------------------------

_STATIC_RESOURCES: Message[dict[str, Any]] = Message(
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
    fields={"listeners": Field(parse_listeners, ()), "clusters": Field(parse_clusters, ())},
    unsupported=unsupported("secrets"),
    build=as_dict,
)


def _build_bootstrap(f: dict[str, Any], ctx: ParseContext, path: str) -> Bootstrap:
    static = f["static_resources"] or {"listeners": (), "clusters": ()}
    return Bootstrap(
        listeners=static["listeners"],
        clusters=static["clusters"],
        admin=f["admin"],
        node=f["node"],
        stats_flush_interval=f["stats_flush_interval"],
        stats_sinks=f["stats_sinks"],
        stats_config=f["stats_config"],
    )


BOOTSTRAP: Message[Bootstrap] = Message(
    "envoy.config.bootstrap.v3.Bootstrap",
    fields={
        "node": message(_NODE, default=Node()),
        "static_resources": message(_STATIC_RESOURCES),
        "admin": message(_ADMIN),
        "stats_flush_interval": duration(5.0, ge=0.001, lt=300.0),
        "stats_sinks": repeated(_STATS_SINK),
        "stats_config": message(_STATS_CONFIG, default=StatsConfig()),
    },
    unsupported=unsupported(
        "node_context_params", "dynamic_resources", "cluster_manager", "hds_config", "flags_path",
        "deferred_stat_options", "stats_flush_on_admin", "stats_eviction_interval", "watchdog", "watchdogs",
        "tracing", "layered_runtime", "overload_manager", "enable_dispatcher_stats", "header_prefix",
        "stats_server_version_override", "use_tcp_for_dns_lookups", "dns_resolution_config",
        "typed_dns_resolver_config", "bootstrap_extensions", "fatal_actions", "config_sources",
        "default_config_source", "default_socket_interface", "certificate_provider_instances",
        "inline_headers", "perf_tracing_file_path", "default_regex_engine", "xds_delegate_extension",
        "xds_config_tracker_extension", "listener_manager", "application_log_config",
        "grpc_async_client_manager_config", "memory_allocator_manager", "enable_worker_cpu_affinity",
    ),
    removed={"runtime": "use layered_runtime"},
    build=_build_bootstrap,
)


def compile_bootstrap(document: object, ctx: ParseContext) -> Bootstrap | None:
    """Check a merged config document; None when ``ctx`` received any error."""
    bootstrap = BOOTSTRAP.parse({} if document is None else document, ctx, "")
    ctx.check_cluster_refs()
    return None if ctx.errors else bootstrap
