"""An allow-list network filter: the complete example of docs/filters.md."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from filters.api import FilterStatus, NetworkFilter
from filters.config_schema import Message, ParseContext, join, repeated, string
from filters.registry import FilterType, register

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowListConfig:
    networks: tuple[Network, ...]


def _build(fields: dict, ctx: ParseContext, path: str) -> AllowListConfig | None:
    networks = []
    for i, cidr in enumerate(fields["cidrs"]):
        try:
            networks.append(ipaddress.ip_network(cidr))
        except ValueError as exc:
            ctx.error(join(join(path, "cidrs"), i), f"expected a CIDR such as 10.0.0.0/8: {exc}")
    return AllowListConfig(tuple(networks))


SCHEMA = Message("mycompany.filters.AllowList", fields={"cidrs": repeated(string(), min_items=1)},
                 build=_build)


class AllowList(NetworkFilter):
    inspects_data = False  # it never reads the bytes

    def __init__(self, config: AllowListConfig) -> None:
        self.config = config

    def on_new_connection(self) -> FilterStatus:
        peer = ipaddress.ip_address(self.callbacks.info.remote_address[0])
        if any(peer in net for net in self.config.networks):
            return FilterStatus.CONTINUE
        self.callbacks.close(flush=False)
        return FilterStatus.STOP_ITERATION


register(FilterType(name="mycompany.allowlist", message="mycompany.filters.AllowList",
                    parse=SCHEMA.parse, build=lambda config, worker: lambda: AllowList(config)))
