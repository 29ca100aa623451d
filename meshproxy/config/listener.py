"""``config.listener.v3.Listener``: one address, one filter chain (envoy-subset.md section 4).

A listener's filters are found in ``filters.registry`` by the message of their
``typed_config["@type"]`` (by ``name`` when typed_config is absent), exactly as Envoy
picks an extension factory. Each filter's own ``parse`` compiles its config, positioned
at the typed_config's YAML path. Chain rules: the last filter is terminal, and only the
last. meshproxy has no filter chain matching, so a listener has exactly one chain:
one ``filter_chains`` entry with an empty ``filter_chain_match``, or a
``default_filter_chain`` alone.
"""

from __future__ import annotations

from typing import Any

from filters import registry
from filters.config_schema import (
    TYPE_URL_PREFIX,
    Field,
    Message,
    ParseContext,
    anything,
    boolean,
    describe,
    enum_field,
    integer,
    join,
    message,
    parse_list,
    parse_typed_config,
    repeated,
    string,
    unsupported,
)
from meshproxy.config.address import LISTENER_ADDRESS
from meshproxy.config.model import (
    DrainType,
    FilterChain,
    Listener,
    NetworkFilterConfig,
    TrafficDirection,
)


def _implemented() -> str:
    types = (registry.lookup_type_url(message) for message in registry.registered_messages())
    return ", ".join(sorted(t.name for t in types if t is not None))


def _build_filter(f: dict[str, Any], ctx: ParseContext, path: str) -> NetworkFilterConfig | None:
    name: str = f["name"]
    tc_path = join(path, "typed_config")
    if f["typed_config"] is None:
        type_url, body = "", {}
        filter_type = registry.lookup_name(name)
        if filter_type is None:
            ctx.error(path, f"filter '{name}' (no typed_config) is not supported by meshproxy")
            return None
    else:
        type_url, body = f["typed_config"]
        filter_type = registry.lookup_type_url(type_url)
        if filter_type is None:
            ctx.error(tc_path, f"filter '{name}' (@type {type_url}) is not supported by meshproxy "
                      f"(implemented: {_implemented()})")
            return None
    before = ctx.error_count()
    config = filter_type.parse(body, ctx.at(tc_path))
    if ctx.error_count() > before:
        return None
    return NetworkFilterConfig(
        name=name,
        type_url=type_url or TYPE_URL_PREFIX + filter_type.message,
        config=config,
        terminal=filter_type.terminal,
    )


_FILTER: Message[NetworkFilterConfig] = Message(
    "envoy.config.listener.v3.Filter",
    fields={"name": string(required=True, min_len=1), "typed_config": Field(parse_typed_config)},
    unsupported=unsupported("config_discovery"),
    removed={"config": "use typed_config"},
    build=_build_filter,
)


def _parse_chain_match(value: object, ctx: ParseContext, path: str) -> None:
    if not isinstance(value, dict):
        ctx.error(path, f"expected mapping, got {describe(value)}")
    elif value:
        ctx.error(path, f"not supported: filter_chain_match ({', '.join(map(str, value))}); "
                  "meshproxy runs one filter chain per listener")


def _build_chain(f: dict[str, Any], ctx: ParseContext, path: str) -> FilterChain | None:
    filters: tuple[NetworkFilterConfig, ...] = f["filters"]
    fpath = join(path, "filters")
    if not filters:
        ctx.error(fpath, "a filter chain needs network filters, the last one terminal "
                  "(e.g. envoy.filters.network.tcp_proxy)")
        return None
    ok = True
    for i, nf in enumerate(filters[:-1]):
        if nf.terminal:
            ctx.error(join(fpath, i), f"filter '{nf.name}' is terminal and must be the last in the chain")
            ok = False
    if not filters[-1].terminal:
        ctx.error(join(fpath, len(filters) - 1), f"the last filter must be terminal (e.g. "
                  f"envoy.filters.network.tcp_proxy); '{filters[-1].name}' is not")
        ok = False
    return FilterChain(filters=filters, name=f["name"]) if ok else None


_FILTER_CHAIN: Message[FilterChain] = Message(
    "envoy.config.listener.v3.FilterChain",
    fields={
        "filter_chain_match": Field(_parse_chain_match),
        "filters": repeated(_FILTER),
        "name": string(),
        "metadata": anything(),
    },
    unsupported=unsupported(
        "use_proxy_proto", "transport_socket", "transport_socket_connect_timeout", "on_demand_configuration"
    ),
    removed={"tls_context": "use transport_socket"},
    build=_build_chain,
)


def _parse_filter_chains(value: object, ctx: ParseContext, path: str) -> tuple[FilterChain, ...]:
    chains = parse_list(value, ctx, path, _FILTER_CHAIN)
    if chains is None:
        return ()
    if len(chains) > 1:
        ctx.error(join(path, 1), "not supported: more than one filter chain per listener "
                  "(meshproxy does not implement filter_chain_match)")
    return tuple(c for c in chains if c is not None)


def _build_listener(f: dict[str, Any], ctx: ParseContext, path: str) -> Listener | None:
    chains: tuple[FilterChain, ...] = f["filter_chains"]
    default: FilterChain | None = f["default_filter_chain"]
    if chains and default is not None:
        ctx.error(join(path, "default_filter_chain"), "not supported together with 'filter_chains' "
                  "(meshproxy has no filter chain matching: use one or the other)")
        return None
    chain = chains[0] if chains else default
    if chain is None:
        ctx.error(path, "a listener needs a filter chain: one 'filter_chains' entry "
                  "or a 'default_filter_chain'")
        return None
    return Listener(
        name=f["name"] or str(f["address"]),
        address=f["address"],
        filter_chain=chain,
        stat_prefix=f["stat_prefix"],
        per_connection_buffer_limit_bytes=f["per_connection_buffer_limit_bytes"],
        enable_reuse_port=f["enable_reuse_port"],
        tcp_backlog_size=f["tcp_backlog_size"],
        drain_type=f["drain_type"],
        traffic_direction=f["traffic_direction"],
    )


LISTENER: Message[Listener] = Message(
    "envoy.config.listener.v3.Listener",
    fields={
        "name": string(None),
        "address": LISTENER_ADDRESS,
        "stat_prefix": string(),
        "filter_chains": Field(_parse_filter_chains, ()),
        "default_filter_chain": message(_FILTER_CHAIN),
        "per_connection_buffer_limit_bytes": integer(1024 * 1024),
        "enable_reuse_port": boolean(True),
        "tcp_backlog_size": integer(1024, minimum=1),
        "drain_type": enum_field(DrainType, DrainType.DEFAULT),
        "traffic_direction": enum_field(TrafficDirection, TrafficDirection.UNSPECIFIED),
        "metadata": anything(),
    },
    unsupported=unsupported(
        "additional_addresses", "filter_chain_matcher", "use_original_dst", "listener_filters",
        "listener_filters_timeout", "continue_on_listener_filters_timeout", "transparent", "freebind",
        "socket_options", "tcp_fast_open_queue_length", "udp_listener_config", "api_listener",
        "connection_balance_config", "reuse_port", "access_log", "max_connections_to_accept_per_socket_event",
        "bind_to_port", "internal_listener", "enable_mptcp", "ignore_global_conn_limit",
        "bypass_overload_manager", "fcds_config",
    ),
    removed={"deprecated_v1": "no replacement"},
    build=_build_listener,
)


def parse_listeners(value: object, ctx: ParseContext, path: str) -> tuple[Listener, ...]:
    """``static_resources.listeners``; duplicate names or addresses (port != 0) are errors."""
    parsed = parse_list(value, ctx, path, LISTENER)
    if parsed is None:
        return ()
    by_address: dict[tuple[str, int], str] = {}
    by_name: dict[str, str] = {}
    for i, listener in enumerate(parsed):
        if listener is None:
            continue
        lpath = join(path, i)
        key = (listener.address.address, listener.address.port_value)
        if key[1] != 0 and key in by_address:
            ctx.error(join(lpath, "address"), f"duplicate listener address {listener.address} "
                      f"(also used at {ctx.where(by_address[key])})")
        elif listener.name in by_name:
            first = ctx.where(by_name[listener.name])
            ctx.error(lpath, f"duplicate listener name '{listener.name}' (first defined at {first})")
        by_address.setdefault(key, lpath)
        by_name.setdefault(listener.name, lpath)
    return tuple(x for x in parsed if x is not None)
