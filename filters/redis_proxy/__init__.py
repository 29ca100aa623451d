"""redis_proxy: Envoy's ``envoy.filters.network.redis_proxy`` (envoy-subset.md §5.2, docs/redis.md).

Importing this package registers the filter and the cluster-side ``RedisProtocolOptions``; the
data path (``filter``, ``splitter``, ``upstream``, ``transaction``, ``router``, ``redirect``) is
imported only when a worker builds a listener, so validating a config never loads it.

Sans-IO pieces: ``codec`` (the RESP request and reply decoders), ``resp`` (RESP types and
encoders) and ``commands`` (the command table, key hashing and Envoy's reply texts). Consistent
hashing lives in ``filters.hashing``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from filters import registry
from filters.config_schema import ProtocolOptionsType, register_protocol_options
from filters.redis_proxy import config

if TYPE_CHECKING:
    from filters.api import NetworkFilter, WorkerContext


def _build(compiled: object, worker_ctx: object) -> Callable[[], NetworkFilter]:
    from filters.redis_proxy import filter as redis_filter

    assert isinstance(compiled, config.RedisProxyConfig), compiled
    return redis_filter.build(compiled, cast("WorkerContext", worker_ctx))


FILTER_TYPE = registry.register(
    registry.FilterType(
        name=config.FILTER_NAME,
        message=config.PROXY_MESSAGE,
        parse=config.parse,
        build=_build,
        terminal=True,
    )
)

PROTOCOL_OPTIONS = register_protocol_options(
    ProtocolOptionsType(name=config.FILTER_NAME, message=config.PROTOCOL_OPTIONS_MESSAGE,
                        parse=config.parse_protocol_options)
)
