"""connection_limit: a host-wide cap on concurrent connections (docs/ratelimit.md).

Importing this package registers ``envoy.filters.network.connection_limit``; the filter
module is imported only when a worker builds a listener.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from filters import registry
from filters.connection_limit import config

if TYPE_CHECKING:
    from filters.api import NetworkFilter, WorkerContext


def _build(compiled: object, worker_ctx: object) -> Callable[[], NetworkFilter]:
    from filters.connection_limit import filter as limit_filter

    assert isinstance(compiled, config.ConnectionLimitConfig), compiled
    return limit_filter.build(compiled, cast("WorkerContext", worker_ctx))


FILTER_TYPE = registry.register(
    registry.FilterType(
        name="envoy.filters.network.connection_limit",
        message="envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        parse=config.parse,
        build=_build,
    )
)
