"""redis_ratelimit's filter: the global rate-limit filter (filters/ratelimit/filter.py) with
the Redis-backed limiter (limiter.py) as its client. Per connection it behaves exactly as
Envoy's network ratelimit filter; only where the decision comes from differs.
"""

from __future__ import annotations

from collections.abc import Callable

from filters.api import NetworkFilter, WorkerContext
from filters.ratelimit.filter import factory
from filters.redis_ratelimit.config import RedisRateLimitConfig
from filters.redis_ratelimit.limiter import RedisLimiter
from filters.redis_ratelimit.stats import RedisRateLimitStats


def build(config: RedisRateLimitConfig, worker: WorkerContext) -> Callable[[], NetworkFilter]:
    """One limiter (one Redis connection pool) per worker and filter config."""
    stats = RedisRateLimitStats(worker.stats, f"ratelimit.{config.stat_prefix}.")
    limiter = RedisLimiter(config, worker.loop, stats)
    worker.loop.call_soon(limiter.start)  # runs once the worker's loop does
    return factory(limiter, config.descriptors, config.failure_mode_deny, stats)
