"""connection_limit configuration: ``envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit``.

Fields: ``stat_prefix``, ``max_connections`` (≥ 1, required), ``delay`` (how long a
connection over the limit is held before it is closed; unset or 0 closes at once) and
``runtime_enabled`` (its ``default_value``: meshproxy has no runtime layer). The count is
host-wide; its slot key is the filter's YAML path, fixed here at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from filters.config_schema import Message, ParseContext, duration, integer, message, string
from filters.local_ratelimit.config import RUNTIME_FEATURE_FLAG

UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class ConnectionLimitConfig:
    stat_prefix: str
    max_connections: int
    delay: float | None  # seconds; None closes at once
    enabled: bool
    counter_key: str


CONNECTION_LIMIT: Message[ConnectionLimitConfig] = Message(
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
    fields={
        "stat_prefix": string(required=True, min_len=1),
        "max_connections": integer(None, minimum=1, maximum=UINT64_MAX, required=True),
        "delay": duration(None),
        "runtime_enabled": message(RUNTIME_FEATURE_FLAG, default=True),
    },
    build=lambda f, ctx, path: ConnectionLimitConfig(
        f["stat_prefix"], f["max_connections"], f["delay"] or None, f["runtime_enabled"], f"path:{path}"),
)


def parse(typed_config: dict[str, Any], ctx: ParseContext) -> ConnectionLimitConfig | None:
    """Compile a connection_limit ``typed_config`` (without ``@type``); None if it had errors."""
    return CONNECTION_LIMIT.parse(typed_config, ctx)
