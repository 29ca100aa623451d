"""The stat block of the global rate-limit filters, ``ratelimit.<stat_prefix>.*``.

Envoy's network ratelimit filter has total, ok, over_limit, error, failure_mode_allowed,
cx_closed (counters) and active (gauge). meshproxy adds the two Lyft-service figures users
ask for (ratelimit#159, #293): ``near_limit`` (the decision was OK but some descriptor had
used more than the near-limit ratio, 80% by default, of its limit) and
``shadow_over_limit`` (some descriptor in shadow mode was over its limit; the decision
stayed OK). Counts are per decision (one per connection), never per descriptor, and a
descriptor value never becomes part of a stat name.
"""

from __future__ import annotations

from typing import ClassVar

from stats_shm.block import StatBlock


class RateLimitStats(StatBlock):
    COUNTERS: ClassVar[tuple[str, ...]] = ("total", "ok", "over_limit", "near_limit", "shadow_over_limit",
                                           "error", "failure_mode_allowed", "cx_closed")
    GAUGES = ("active",)
