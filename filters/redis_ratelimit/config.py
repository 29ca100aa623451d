"""redis_ratelimit configuration: meshproxy's own global limiter, with no rate-limit service.

``@type: type.googleapis.com/meshproxy.filters.network.redis_ratelimit.v1.RedisRateLimit``
(extension name ``meshproxy.filters.network.redis_ratelimit``)::

    stat_prefix: edge                   # stats under ratelimit.edge.
    domain: mongo_cps                   # the domain of the limits below
    descriptors:                        # sent per connection, as Envoy's ratelimit filter
      - entries: [{key: remote_address, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]
    limits_file: ratelimit/mongo.yaml   # a Lyft ratelimit config file (relative to this file)
    # limits: {domain: ..., descriptors: [...]}   # or the same, inline
    redis_url: redis://127.0.0.1:6379/0 # redis-py URL: redis://, rediss://, unix://; user:pass@
    key_prefix: ""                      # Lyft's CACHE_KEY_PREFIX
    algorithm: FIXED_WINDOW             # Lyft-compatible; or GCRA (no burst at window edges)
    timeout: 0.02s                      # per decision, then failure mode
    failure_mode_deny: false            # fail open (default) or closed
    near_limit_ratio: 0.8
    pool_size: 4                        # Redis connections per worker, at most
    circuit_breaker: {failure_threshold: 3, open_duration: 1s}

The limits file is read and checked when the config is loaded (``--mode validate``
included); its errors are reported at ``limits_file`` with the file's own path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from filters.config_schema import (
    Field,
    Message,
    Oneof,
    ParseContext,
    boolean,
    describe,
    duration,
    enum_field,
    integer,
    join,
    message,
    string,
)
from filters.ratelimit.descriptors import DescriptorSet, descriptor_set
from filters.redis_ratelimit.algorithms import Algorithm
from filters.redis_ratelimit.lyft_config import (
    LimitConfig,
    LyftConfigError,
    load_lyft_file,
    parse_lyft_config,
)

MESSAGE = "meshproxy.filters.network.redis_ratelimit.v1.RedisRateLimit"
NAME = "meshproxy.filters.network.redis_ratelimit"
DEFAULT_TIMEOUT_S = 0.020


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    failure_threshold: int = 3
    open_duration: float = 1.0


@dataclass(frozen=True, slots=True)
class RedisRateLimitConfig:
    stat_prefix: str
    domain: str
    descriptors: DescriptorSet
    limits: LimitConfig
    redis_url: str
    key_prefix: str = ""
    algorithm: Algorithm = Algorithm.FIXED_WINDOW
    timeout: float = DEFAULT_TIMEOUT_S
    failure_mode_deny: bool = False
    near_limit_ratio: float = 0.8
    pool_size: int = 4
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()


def _ratio(default: float) -> Field:
    def parse(value: object, ctx: ParseContext, path: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            ctx.error(path, f"expected a number in (0, 1], got {describe(value)}")
            return None
        return float(value)

    return Field(parse, default)


_CIRCUIT_BREAKER: Message[CircuitBreakerConfig] = Message(
    f"{MESSAGE}.CircuitBreaker",
    fields={"failure_threshold": integer(3, minimum=1), "open_duration": duration(1.0, gt=0)},
    build=lambda f, ctx, path: CircuitBreakerConfig(f["failure_threshold"], f["open_duration"]),
)


def _load_limits(f: dict[str, Any], ctx: ParseContext, path: str) -> LimitConfig | None:
    if f["limits"] is not None:
        where = join(path, "limits")
        try:
            return parse_lyft_config(f["limits"])
        except LyftConfigError as exc:
            for line in str(exc).splitlines():
                ctx.error(where, line)
            return None
    where = join(path, "limits_file")
    file = f["limits_file"]
    if not os.path.isabs(file):  # relative to the config file that names it
        source = ctx.source_of(where)
        if source and os.path.exists(source):
            file = os.path.join(os.path.dirname(os.path.abspath(source)), file)
    try:
        return load_lyft_file(file)
    except OSError as exc:
        ctx.error(where, f"cannot read the limits file {file}: {exc.strerror or exc}")
    except LyftConfigError as exc:
        for line in str(exc).splitlines():
            ctx.error(where, f"{file}: {line}")
    return None


def _build(f: dict[str, Any], ctx: ParseContext, path: str) -> RedisRateLimitConfig | None:
    limits = _load_limits(f, ctx, path)
    if limits is None:
        return None
    if limits.domain != f["domain"]:
        ctx.error(join(path, "domain"), f"the limits are for domain '{limits.domain}', not '{f['domain']}'")
        return None
    return RedisRateLimitConfig(
        stat_prefix=f["stat_prefix"],
        domain=f["domain"],
        descriptors=f["descriptors"],
        limits=limits,
        redis_url=f["redis_url"],
        key_prefix=f["key_prefix"],
        algorithm=f["algorithm"],
        timeout=f["timeout"],
        failure_mode_deny=f["failure_mode_deny"],
        near_limit_ratio=f["near_limit_ratio"],
        pool_size=f["pool_size"],
        circuit_breaker=f["circuit_breaker"],
    )


REDIS_RATE_LIMIT: Message[RedisRateLimitConfig] = Message(
    MESSAGE,
    fields={
        "stat_prefix": string(required=True, min_len=1),
        "domain": string(required=True, min_len=1),
        "descriptors": descriptor_set(),
        "limits_file": string(None, min_len=1),
        "limits": Field(lambda value, ctx, path: value),
        "redis_url": string("redis://127.0.0.1:6379/0", min_len=1),
        "key_prefix": string(""),
        "algorithm": enum_field(Algorithm, Algorithm.FIXED_WINDOW),
        "timeout": duration(DEFAULT_TIMEOUT_S, gt=0),
        "failure_mode_deny": boolean(False),
        "near_limit_ratio": _ratio(0.8),
        "pool_size": integer(4, minimum=1, maximum=1024),
        "circuit_breaker": message(_CIRCUIT_BREAKER, default=CircuitBreakerConfig()),
    },
    oneofs=(Oneof(("limits_file", "limits"), required=True),),
    build=_build,
)


def parse(typed_config: dict[str, Any], ctx: ParseContext) -> RedisRateLimitConfig | None:
    """Compile a redis_ratelimit ``typed_config`` (without ``@type``); None if it had errors."""
    return REDIS_RATE_LIMIT.parse(typed_config, ctx)

