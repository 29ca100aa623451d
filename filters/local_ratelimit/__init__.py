"""local_ratelimit: host-wide connection-rate limiting with a shared token bucket (docs/ratelimit.md).

Importing this package registers ``envoy.filters.network.local_ratelimit``; the filter
module is imported only when a worker builds a listener.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from filters import registry
from filters.local_ratelimit import config

if TYPE_CHECKING:
    from filters.api import NetworkFilter, WorkerContext


def _build(compiled: object, worker_ctx: object) -> Callable[[], NetworkFilter]:
    from filters.local_ratelimit import filter as local_filter

    assert isinstance(compiled, config.LocalRateLimitConfig), compiled
    return local_filter.build(compiled, cast("WorkerContext", worker_ctx))


FILTER_TYPE = registry.register(
    registry.FilterType(
        name="envoy.filters.network.local_ratelimit",
        message="envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
        parse=config.parse,
        build=_build,
    )
)
