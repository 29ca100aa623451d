"""local_ratelimit configuration: ``envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit``.

Fields (envoy-subset.md §5.4): ``stat_prefix``, ``token_bucket{max_tokens, tokens_per_fill,
fill_interval}``, ``runtime_enabled`` and ``share_key``. The bucket is host-wide (see
shared_bucket.py); its slot key is fixed here, at compile time:

* without ``share_key``: the filter's own YAML path, so each filter config has its own
  bucket, shared by every worker (Envoy: one bucket per filter config per process);
* with ``share_key``: the key, so filters with the same key *and* the same bucket share
  one (Envoy's rule: a different bucket under the same key is a different bucket). The
  bucket parameters are part of the slot key in both cases.

meshproxy has no runtime layer, so ``runtime_enabled`` is its ``default_value``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from filters.config_schema import (
    Field,
    Message,
    ParseContext,
    boolean,
    duration,
    integer,
    message,
    string,
)

# Envoy refuses faster fill timers ("local rate limit token bucket fill timer must be >= 50ms").
MIN_FILL_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class TokenBucket:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float  # seconds


@dataclass(frozen=True, slots=True)
class LocalRateLimitConfig:
    stat_prefix: str
    token_bucket: TokenBucket
    enabled: bool
    bucket_key: str  # the host-wide slot key (share_key or the filter's YAML path)


def _required(field: Field) -> Field:
    return Field(field.parse, field.default, required=True)


TOKEN_BUCKET: Message[TokenBucket] = Message(
    "envoy.type.v3.TokenBucket",
    fields={
        "max_tokens": integer(None, minimum=1, required=True),
        "tokens_per_fill": integer(1, minimum=1),
        "fill_interval": _required(duration(None, ge=MIN_FILL_INTERVAL_S)),
    },
    build=lambda f, ctx, path: TokenBucket(f["max_tokens"], f["tokens_per_fill"], f["fill_interval"]),
)

# config.core.v3.RuntimeFeatureFlag; compiled to its default_value (no runtime layer).
RUNTIME_FEATURE_FLAG: Message[bool] = Message(
    "envoy.config.core.v3.RuntimeFeatureFlag",
    fields={"default_value": Field(boolean().parse, None, required=True),
            "runtime_key": string(required=True, min_len=1)},
    build=lambda f, ctx, path: bool(f["default_value"]),
)


def _build(f: dict[str, Any], ctx: ParseContext, path: str) -> LocalRateLimitConfig:
    share_key = f["share_key"]
    return LocalRateLimitConfig(
        stat_prefix=f["stat_prefix"],
        token_bucket=f["token_bucket"],
        enabled=f["runtime_enabled"],
        bucket_key=f"share:{share_key}" if share_key else f"path:{path}",
    )


LOCAL_RATE_LIMIT: Message[LocalRateLimitConfig] = Message(
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
    fields={
        "stat_prefix": string(required=True, min_len=1),
        "token_bucket": message(TOKEN_BUCKET, required=True),
        "runtime_enabled": message(RUNTIME_FEATURE_FLAG, default=True),
        "share_key": string(""),
    },
    build=_build,
)


def parse(typed_config: dict[str, Any], ctx: ParseContext) -> LocalRateLimitConfig | None:
    """Compile a local_ratelimit ``typed_config`` (without ``@type``); None if it had errors."""
    return LOCAL_RATE_LIMIT.parse(typed_config, ctx)
