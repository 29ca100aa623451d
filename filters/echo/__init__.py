"""``envoy.filters.network.echo``: writes every byte it reads back to the sender.

Envoy ships the same filter; meshproxy's default config uses it as a self-contained
upstream, and docs/filters.md uses it as the model of a small custom filter.
"""

from __future__ import annotations

from collections.abc import Callable

from filters.api import FilterStatus, NetworkFilter, WorkerContext
from filters.config_schema import ParseContext
from filters.registry import FilterType, register


class EchoConfig:
    """The echo filter has no settings (Envoy's ``Echo`` message is empty)."""

    __slots__ = ()


class EchoFilter(NetworkFilter):
    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self.callbacks.write(data, end_stream)
        return FilterStatus.STOP_ITERATION


def parse(typed_config: dict, ctx: ParseContext) -> EchoConfig:
    ctx.check_fields(typed_config, allowed=())
    return EchoConfig()


def build(config: EchoConfig, worker: WorkerContext) -> Callable[[], NetworkFilter]:
    return EchoFilter


register(FilterType(name="envoy.filters.network.echo",
                    message="envoy.extensions.filters.network.echo.v3.Echo",
                    parse=parse, build=build, terminal=True))
