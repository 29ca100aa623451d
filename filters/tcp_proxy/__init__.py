"""tcp_proxy: the terminal filter that relays bytes to an upstream cluster (envoy-subset.md 5.1).

Importing this package registers it; the filter itself (``filter.py``) is imported only
when a worker builds a listener, so validating a config never loads the data path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from filters import registry
from filters.tcp_proxy import config

if TYPE_CHECKING:
    from filters.api import NetworkFilter, WorkerContext


def _build(compiled: object, worker_ctx: object) -> Callable[[], NetworkFilter]:
    from filters.tcp_proxy import filter as tcp_filter

    assert isinstance(compiled, config.TcpProxyConfig), compiled
    return tcp_filter.build(compiled, cast("WorkerContext", worker_ctx))


FILTER_TYPE = registry.register(
    registry.FilterType(
        name="envoy.filters.network.tcp_proxy",
        message="envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        parse=config.parse,
        build=_build,
        terminal=True,
    )
)
