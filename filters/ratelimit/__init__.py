"""ratelimit: Envoy's global network rate-limit filter, over a gRPC rate-limit service.

Importing this package registers ``envoy.filters.network.ratelimit``. Only the config is
loaded here; the filter and its gRPC client (``grpcio``, ``xds-protos``: the
``meshproxy[grpc]`` extra) are imported when a worker builds a listener that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from filters import registry
from filters.ratelimit import config

if TYPE_CHECKING:
    from filters.api import NetworkFilter, WorkerContext


def _build(compiled: object, worker_ctx: object) -> Callable[[], NetworkFilter]:
    from filters.ratelimit import filter as rl_filter
    from filters.ratelimit.grpc_client import GrpcRateLimitClient
    from filters.ratelimit.stats import RateLimitStats

    assert isinstance(compiled, config.RateLimitConfig), compiled
    worker = cast("WorkerContext", worker_ctx)
    stats = RateLimitStats(worker.stats, f"ratelimit.{compiled.stat_prefix}.")
    client = GrpcRateLimitClient(worker.clusters.get(compiled.cluster), compiled.domain, compiled.timeout,
                                 compiled.authority, worker.loop)
    worker.loop.call_soon(client.start)  # runs once the worker's loop does
    return rl_filter.factory(client, compiled.descriptors, compiled.failure_mode_deny, stats)


FILTER_TYPE = registry.register(
    registry.FilterType(
        name="envoy.filters.network.ratelimit",
        message="envoy.extensions.filters.network.ratelimit.v3.RateLimit",
        parse=config.parse,
        build=_build,
    )
)
