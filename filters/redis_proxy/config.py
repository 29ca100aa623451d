"""redis_proxy configuration: ``envoy.extensions.filters.network.redis_proxy.v3.RedisProxy``.

``parse`` compiles the filter's ``typed_config`` once, at config load (envoy-subset.md §5.2), into
a frozen ``RedisProxyConfig``; ``parse_protocol_options`` compiles the cluster-side
``RedisProtocolOptions`` (upstream AUTH) found under the cluster's
``typed_extension_protocol_options["envoy.filters.network.redis_proxy"]``.

Secrets are ``core.v3.DataSource`` messages (``inline_string``, ``inline_bytes`` in base64,
``filename``, ``environment_variable``), resolved here to bytes, so a missing file or variable
is a config error with its YAML path rather than a failure at the first AUTH.

Accepted Envoy fields that change nothing here, stated so: ``read_policy`` matters only with
replicas, which only Redis Cluster discovery (``envoy.clusters.redis``, not supported) reports;
every host of a plain cluster is a primary, so MASTER, PREFER_MASTER, PREFER_REPLICA and ANY
all route to it, and REPLICA (which would route nothing) is refused.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
from dataclasses import dataclass
from typing import Any

from filters.config_schema import (
    Field,
    Message,
    Oneof,
    ParseContext,
    as_dict,
    boolean,
    cluster_ref,
    duration,
    enum_field,
    integer,
    join,
    message,
    repeated,
    string,
    unsupported,
)

#: The key of this filter's options in a cluster's ``typed_extension_protocol_options``.
FILTER_NAME = "envoy.filters.network.redis_proxy"
PROXY_MESSAGE = "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
PROTOCOL_OPTIONS_MESSAGE = "envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions"

#: Envoy: "If max_buffer_size_before_flush is set, but buffer_flush_timeout is not, the latter
#: defaults to 3ms."
DEFAULT_BUFFER_FLUSH_TIMEOUT = 0.003


class ReadPolicy(enum.Enum):
    MASTER = "MASTER"
    PREFER_MASTER = "PREFER_MASTER"
    PREFER_REPLICA = "PREFER_REPLICA"
    ANY = "ANY"


@dataclass(frozen=True, slots=True)
class ConnPoolSettings:
    """``RedisProxy.ConnPoolSettings``; hashable, so pools with equal settings are shared."""

    op_timeout: float
    enable_hashtagging: bool = False
    enable_redirection: bool = False
    max_buffer_size_before_flush: int = 0  # 0: flush once per event-loop pass
    buffer_flush_timeout: float = DEFAULT_BUFFER_FLUSH_TIMEOUT
    max_upstream_unknown_connections: int = 100
    enable_command_stats: bool = False
    read_policy: ReadPolicy = ReadPolicy.MASTER


@dataclass(frozen=True, slots=True)
class Route:
    """One prefix route (``catch_all_route`` has an empty prefix and never strips)."""

    cluster: str
    prefix: str = ""
    remove_prefix: bool = False


@dataclass(frozen=True, slots=True)
class RedisProxyConfig:
    """The compiled redis_proxy config."""

    stat_prefix: str
    settings: ConnPoolSettings
    routes: tuple[Route, ...] = ()
    catch_all_route: Route | None = None
    case_insensitive: bool = False
    downstream_auth_passwords: tuple[bytes, ...] = ()
    downstream_auth_username: bytes = b""
    latency_in_micros: bool = False
    custom_commands: tuple[str, ...] = ()

    def cluster_names(self) -> tuple[str, ...]:
        names = [r.cluster for r in self.routes]
        if self.catch_all_route is not None:
            names.insert(0, self.catch_all_route.cluster)
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class RedisProtocolOptions:
    """``RedisProtocolOptions``: the AUTH meshproxy sends on every new upstream connection."""

    auth_password: bytes = b""
    auth_username: bytes = b""


# ----- DataSource --------------------------------------------------------------------------------


def _data_source(f: dict[str, Any], ctx: ParseContext, path: str) -> bytes | None:
    if f["inline_string"] is not None:
        return str(f["inline_string"]).encode()
    if f["inline_bytes"] is not None:
        try:
            return base64.b64decode(f["inline_bytes"], validate=True)
        except (binascii.Error, ValueError):
            ctx.error(join(path, "inline_bytes"), "expected base64 text")
            return None
    if f["environment_variable"] is not None:
        value = os.environ.get(f["environment_variable"])
        if value is None:
            ctx.error(join(path, "environment_variable"),
                      f"environment variable '{f['environment_variable']}' is not set")
            return None
        return value.encode()
    try:
        with open(f["filename"], "rb") as secret:
            return secret.read()
    except OSError as exc:
        ctx.error(join(path, "filename"), f"cannot read {f['filename']!r}: {exc.strerror or exc}")
        return None


_SOURCES = ("filename", "inline_bytes", "inline_string", "environment_variable")
DATA_SOURCE: Message[bytes] = Message(
    "envoy.config.core.v3.DataSource",
    fields={name: string(None) for name in _SOURCES},
    oneofs=(Oneof(_SOURCES, required=True),),
    unsupported=unsupported("watched_directory"),
    build=_data_source,
)


# ----- RedisProxy -------------------------------------------------------------------------------


_SETTINGS: Message[ConnPoolSettings] = Message(
    "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy.ConnPoolSettings",
    fields={
        "op_timeout": Field(duration(None, gt=0).parse, None, required=True),
        "enable_hashtagging": boolean(),
        "enable_redirection": boolean(),
        "max_buffer_size_before_flush": integer(0),
        "buffer_flush_timeout": duration(None),
        "max_upstream_unknown_connections": integer(100),
        "enable_command_stats": boolean(),
        "read_policy": enum_field(ReadPolicy, ReadPolicy.MASTER, envoy_only=("REPLICA",)),
    },
    unsupported=unsupported("dns_cache_config", "connection_rate_limit"),
    build=lambda f, ctx, path: ConnPoolSettings(
        op_timeout=f["op_timeout"],
        enable_hashtagging=f["enable_hashtagging"],
        enable_redirection=f["enable_redirection"],
        max_buffer_size_before_flush=f["max_buffer_size_before_flush"],
        buffer_flush_timeout=(DEFAULT_BUFFER_FLUSH_TIMEOUT if f["buffer_flush_timeout"] is None
                              else f["buffer_flush_timeout"]),
        max_upstream_unknown_connections=f["max_upstream_unknown_connections"],
        enable_command_stats=f["enable_command_stats"],
        read_policy=f["read_policy"],
    ),
)

_ROUTE: Message[Route] = Message(
    "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy.PrefixRoutes.Route",
    fields={"prefix": string(""), "remove_prefix": boolean(), "cluster": cluster_ref(required=True)},
    unsupported=unsupported("request_mirror_policy", "key_formatter", "read_command_policy"),
    build=lambda f, ctx, path: Route(f["cluster"], f["prefix"], f["remove_prefix"]),
)


def _prefix_routes(f: dict[str, Any], ctx: ParseContext, path: str) -> dict[str, Any] | None:
    seen: dict[str, int] = {}
    for i, route in enumerate(f["routes"]):
        prefix = route.prefix.lower() if f["case_insensitive"] else route.prefix
        if prefix in seen:
            ctx.error(join(join(path, "routes"), i),
                      f"prefix '{route.prefix}' already exists (routes[{seen[prefix]}])")
            return None
        seen[prefix] = i
    return f


_PREFIX_ROUTES: Message[dict[str, Any]] = Message(
    "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy.PrefixRoutes",
    fields={"routes": repeated(_ROUTE), "case_insensitive": boolean(), "catch_all_route": message(_ROUTE)},
    removed={"catch_all_cluster": "use catch_all_route"},
    build=_prefix_routes,
)


def _build(f: dict[str, Any], ctx: ParseContext, path: str) -> RedisProxyConfig | None:
    routes = f["prefix_routes"] or {"routes": (), "case_insensitive": False, "catch_all_route": None}
    catch_all = routes["catch_all_route"]
    if catch_all is not None and (catch_all.prefix or catch_all.remove_prefix):
        ctx.error(join(path, "prefix_routes.catch_all_route"),
                  "a catch_all_route has no prefix to match or remove")
        return None
    passwords = list(f["downstream_auth_passwords"])
    if f["downstream_auth_password"] is not None:
        passwords.insert(0, f["downstream_auth_password"])
    return RedisProxyConfig(
        stat_prefix=f["stat_prefix"],
        settings=f["settings"],
        routes=routes["routes"],
        catch_all_route=catch_all,
        case_insensitive=routes["case_insensitive"],
        downstream_auth_passwords=tuple(passwords),
        downstream_auth_username=f["downstream_auth_username"] or b"",
        latency_in_micros=f["latency_in_micros"],
        custom_commands=tuple(dict.fromkeys(c.lower() for c in f["custom_commands"])),
    )


REDIS_PROXY: Message[RedisProxyConfig] = Message(
    PROXY_MESSAGE,
    fields={
        "stat_prefix": string(required=True, min_len=1),
        "settings": message(_SETTINGS, required=True),
        "prefix_routes": message(_PREFIX_ROUTES),
        "downstream_auth_password": message(DATA_SOURCE),
        "downstream_auth_passwords": repeated(DATA_SOURCE),
        "downstream_auth_username": message(DATA_SOURCE),
        "latency_in_micros": boolean(),
        "custom_commands": repeated(string(None, min_len=1)),
    },
    unsupported=unsupported("faults", "external_auth_provider"),
    removed={"cluster": "use prefix_routes.catch_all_route"},
    build=_build,
)


def parse(typed_config: dict[str, Any], ctx: ParseContext) -> RedisProxyConfig | None:
    """Compile a redis_proxy ``typed_config`` (without ``@type``); None if it had errors."""
    return REDIS_PROXY.parse(typed_config, ctx)


# ----- RedisProtocolOptions ---------------------------------------------------------------------

_PROTOCOL_OPTIONS: Message[dict[str, Any]] = Message(
    PROTOCOL_OPTIONS_MESSAGE,
    fields={"auth_password": message(DATA_SOURCE), "auth_username": message(DATA_SOURCE)},
    unsupported=unsupported("credentials"),
    build=as_dict,
)


def parse_protocol_options(typed_config: dict[str, Any], ctx: ParseContext) -> RedisProtocolOptions | None:
    """Compile a cluster's ``RedisProtocolOptions``; a username needs a password."""
    f = _PROTOCOL_OPTIONS.parse(typed_config, ctx)
    if f is None:
        return None
    if f["auth_username"] and not f["auth_password"]:
        ctx.error(ctx.path, "auth_username needs an auth_password")
        return None
    return RedisProtocolOptions(auth_password=f["auth_password"] or b"",
                                auth_username=f["auth_username"] or b"")


def protocol_options_of(cluster_config: Any) -> RedisProtocolOptions:
    """The compiled options a cluster carries for this filter (defaults when it has none)."""
    for key, options in getattr(cluster_config, "protocol_options", ()):
        if key == FILTER_NAME and isinstance(options, RedisProtocolOptions):
            return options
    return RedisProtocolOptions()
