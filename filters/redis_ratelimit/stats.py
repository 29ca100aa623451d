"""redis_ratelimit's stat block: the ``ratelimit.<stat_prefix>.`` set of the global filters,
plus ``circuit_open``: decisions answered ERROR by the open circuit breaker without asking
Redis (each is also counted in ``error``). Nothing is named after a descriptor value.
"""

from __future__ import annotations

from filters.ratelimit.stats import RateLimitStats


class RedisRateLimitStats(RateLimitStats):
    COUNTERS = (*RateLimitStats.COUNTERS, "circuit_open")
