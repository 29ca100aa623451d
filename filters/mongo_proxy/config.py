"""mongo_proxy configuration: Envoy's ``MongoProxy`` message, and meshproxy's superset of it.

``parse`` turns a ``typed_config`` mapping into a frozen ``MongoProxyConfig`` once, at config
load (envoy-subset.md §5.3). Two messages are accepted:

* ``envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy``: exactly Envoy's fields
  (``stat_prefix``, ``access_log``, ``delay``, ``emit_dynamic_metadata``, ``commands``), so a
  config that meshproxy accepts under this type is one Envoy accepts too. Unknown fields are
  errors, as in Envoy; a meshproxy-only field gets a hint naming the other message.
* ``meshproxy.extensions.filters.network.mongo_proxy.v1.MongoProxy``: the same fields plus
  meshproxy's extensions (``slow_operation_threshold``, ``log_query_values``,
  ``max_stat_names``). Envoy does not know this type, so the extensions can never be mistaken
  for Envoy fields; switching the ``@type`` is the explicit opt-in (docs/mongo.md).

``delay`` is ``common.fault.v3.FaultDelay``: ``fixed_delay`` (> 0) is required (``header_delay``
is HTTP-only), ``percentage`` is a ``type.v3.FractionalPercent``. As in Envoy, an absent
``percentage`` is 0%: the delay never fires until a percentage is set.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from filters.config_schema import (
    Field,
    Message,
    Oneof,
    ParseContext,
    boolean,
    duration,
    enum_field,
    integer,
    join,
    message,
    repeated,
    string,
    unsupported,
)

ENVOY_MESSAGE: Final = "envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"
MESHPROXY_MESSAGE: Final = "meshproxy.extensions.filters.network.mongo_proxy.v1.MongoProxy"

# Envoy's default when ``commands`` is empty (config.cc).
DEFAULT_COMMANDS: Final = ("delete", "insert", "update")
# Per-name stats (cmd.*, collection.*, callsite.*) one filter config may create in one worker.
DEFAULT_MAX_STAT_NAMES: Final = 1000


class Denominator(enum.IntEnum):
    """``type.v3.FractionalPercent.DenominatorType``: the value is the denominator itself."""

    HUNDRED = 100
    TEN_THOUSAND = 10_000
    MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class DelayFault:
    """A fixed delay applied to ``numerator / denominator`` of the requests."""

    fixed_delay: float  # seconds, > 0
    numerator: int = 0
    denominator: int = 100


@dataclass(frozen=True, slots=True)
class MongoProxyConfig:
    """The compiled mongo_proxy config (Envoy's fields, then meshproxy's extensions)."""

    stat_prefix: str
    access_log: str = ""  # "" = no access log
    delay: DelayFault | None = None
    emit_dynamic_metadata: bool = False
    commands: tuple[str, ...] = DEFAULT_COMMANDS
    # meshproxy extensions (only settable through MESHPROXY_MESSAGE)
    slow_operation_threshold: float = 0.0  # seconds; 0 = log every operation
    log_query_values: bool = False
    max_stat_names: int = DEFAULT_MAX_STAT_NAMES


_PERCENT: Message[tuple[int, int]] = Message(
    "envoy.type.v3.FractionalPercent",
    fields={"numerator": integer(0), "denominator": enum_field(Denominator, Denominator.HUNDRED)},
    build=lambda f, ctx, path: (f["numerator"], int(f["denominator"])),
)

_DELAY: Message[DelayFault] = Message(
    "envoy.extensions.filters.common.fault.v3.FaultDelay",
    fields={"fixed_delay": duration(None, gt=0.0), "percentage": message(_PERCENT)},
    oneofs=(Oneof(("fixed_delay", "header_delay"), required=True),),
    unsupported=unsupported("header_delay"),
    removed={"type": "a fixed delay is the only kind; set fixed_delay",
             "percent": "use percentage {numerator, denominator}"},
    build=lambda f, ctx, path: DelayFault(f["fixed_delay"], *(f["percentage"] or (0, 100))),
)

_ENVOY_FIELDS: Final[dict[str, Field]] = {
    "stat_prefix": string(required=True, min_len=1),
    "access_log": string(""),
    "delay": message(_DELAY),
    "emit_dynamic_metadata": boolean(False),
    "commands": repeated(string(None, min_len=1)),
}

_EXTENSION_FIELDS: Final[dict[str, Field]] = {
    "slow_operation_threshold": duration(0.0),
    "log_query_values": boolean(False),
    "max_stat_names": integer(DEFAULT_MAX_STAT_NAMES, maximum=100_000),
}


def _build(f: dict[str, Any], ctx: ParseContext, path: str) -> MongoProxyConfig:
    return MongoProxyConfig(
        stat_prefix=f["stat_prefix"],
        access_log=f["access_log"],
        delay=f["delay"],
        emit_dynamic_metadata=f["emit_dynamic_metadata"],
        commands=tuple(dict.fromkeys(f["commands"])) or DEFAULT_COMMANDS,
        slow_operation_threshold=f.get("slow_operation_threshold") or 0.0,
        log_query_values=bool(f.get("log_query_values")),
        max_stat_names=f.get("max_stat_names", DEFAULT_MAX_STAT_NAMES),
    )


ENVOY_MONGO_PROXY: Message[MongoProxyConfig] = Message(
    ENVOY_MESSAGE, fields=_ENVOY_FIELDS, build=_build,
)

MESHPROXY_MONGO_PROXY: Message[MongoProxyConfig] = Message(
    MESHPROXY_MESSAGE, fields={**_ENVOY_FIELDS, **_EXTENSION_FIELDS}, build=_build,
)


def parse(typed_config: dict[str, Any], ctx: ParseContext) -> MongoProxyConfig | None:
    """Compile Envoy's ``MongoProxy`` (without ``@type``); None if it had errors."""
    extensions = [key for key in typed_config if key in _EXTENSION_FIELDS] \
        if isinstance(typed_config, dict) else []
    if not extensions:
        return ENVOY_MONGO_PROXY.parse(typed_config, ctx)
    for key in extensions:
        ctx.error(join(ctx.path, key), f"'{key}' is a meshproxy extension, not a field of Envoy's "
                  f"MongoProxy: set it with '@type: type.googleapis.com/{MESHPROXY_MESSAGE}'")
    ENVOY_MONGO_PROXY.parse({k: v for k, v in typed_config.items() if k not in _EXTENSION_FIELDS}, ctx)
    return None


def parse_extended(typed_config: dict[str, Any], ctx: ParseContext) -> MongoProxyConfig | None:
    """Compile meshproxy's ``MongoProxy`` (Envoy's fields plus the extensions)."""
    return MESHPROXY_MONGO_PROXY.parse(typed_config, ctx)
