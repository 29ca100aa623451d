"""redis_ratelimit: a global rate limit kept in Redis, with no rate-limit service (docs/ratelimit.md).

Importing this package registers ``meshproxy.filters.network.redis_ratelimit`` for
``@type: type.googleapis.com/meshproxy.filters.network.redis_ratelimit.v1.RedisRateLimit``.
Limits are written in Lyft's ratelimit config format; the filter module (and redis-py)
is imported only when a worker builds a listener that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from filters import registry
from filters.redis_ratelimit import config

if TYPE_CHECKING:
    from filters.api import NetworkFilter, WorkerContext


def _build(compiled: object, worker_ctx: object) -> Callable[[], NetworkFilter]:
    from filters.redis_ratelimit import filter as redis_filter

    assert isinstance(compiled, config.RedisRateLimitConfig), compiled
    return redis_filter.build(compiled, cast("WorkerContext", worker_ctx))


FILTER_TYPE = registry.register(
    registry.FilterType(name=config.NAME, message=config.MESSAGE, parse=config.parse, build=_build)
)
