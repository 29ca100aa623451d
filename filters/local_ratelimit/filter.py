"""local_ratelimit: admit a new connection only if the host-wide token bucket has a token.

Envoy's network ``LocalRateLimitFilter`` (envoy-subset.md §5.4): each new connection takes
one token; with none left, ``rate_limited``++ and the connection is closed at once with no
flush (the client sees a reset), before any later filter sees it. The bucket is one per
filter config (or ``share_key``) for the **whole host**, shared by every worker process
through shared memory (shared_bucket.py), so N workers admit what one bucket allows, not
N times that.
"""

from __future__ import annotations

from collections.abc import Callable

from filters.api import FilterStatus, NetworkFilter, WorkerContext
from filters.local_ratelimit.config import LocalRateLimitConfig
from filters.local_ratelimit.shared_bucket import SharedTokenBucket, region_of
from filters.local_ratelimit.stats import LocalRateLimitStats

_CONTINUE = FilterStatus.CONTINUE
_STOP = FilterStatus.STOP_ITERATION


class LocalRateLimitFilter(NetworkFilter):
    """Takes one token per connection; closes the connection when there is none."""

    inspects_data = False

    def __init__(self, bucket: SharedTokenBucket, stats: LocalRateLimitStats) -> None:
        self.bucket = bucket
        self.stats = stats

    def on_new_connection(self) -> FilterStatus:
        if self.bucket.try_take():
            return _CONTINUE
        self.stats.rate_limited.inc()
        self.callbacks.close(flush=False)
        return _STOP


class _Disabled(NetworkFilter):
    """``runtime_enabled: {default_value: false}``: the filter passes everything."""

    inspects_data = False


def build(config: LocalRateLimitConfig, worker: WorkerContext) -> Callable[[], NetworkFilter]:
    """Bind the stat block and this worker's handle on the host-wide bucket; once per worker."""
    stats = LocalRateLimitStats(worker.stats, f"local_rate_limit.{config.stat_prefix}.")
    if not config.enabled:
        return _Disabled
    tb = config.token_bucket
    bucket = region_of(worker).token_bucket(config.bucket_key, tb.max_tokens, tb.tokens_per_fill,
                                            tb.fill_interval)

    def make() -> NetworkFilter:
        return LocalRateLimitFilter(bucket, stats)

    return make
