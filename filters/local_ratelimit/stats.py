"""local_ratelimit's stat block, ``local_rate_limit.<stat_prefix>.*`` (envoy-subset.md §5.4).

The root is Envoy's code spelling, ``local_rate_limit.`` (its tag extractor
``envoy.local_network_ratelimit_prefix`` matches it); the docs' ``local_ratelimit.`` is wrong.
"""

from __future__ import annotations

from stats_shm.block import StatBlock


class LocalRateLimitStats(StatBlock):
    COUNTERS = ("rate_limited",)
