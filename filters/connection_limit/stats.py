"""connection_limit's stat block, ``connection_limit.<stat_prefix>.*`` (Envoy's names).

``active_connections`` counts every connection the filter has seen and that is still
open, the rejected ones included until they close, as Envoy counts it.
"""

from __future__ import annotations

from stats_shm.block import StatBlock


class ConnectionLimitStats(StatBlock):
    COUNTERS = ("limited_connections",)
    GAUGES = ("active_connections",)
