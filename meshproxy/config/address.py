"""``config.core.v3.Address``: the one address shape used by listeners, clusters, admin and sinks.

Only ``socket_address`` is implemented. Whether the address must be an IP literal, which
protocols are allowed and whether port 0 is meaningful depend on where the address is
used, so ``address_spec`` builds one schema per use. Nothing here resolves names.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from filters.config_schema import (
    Field,
    Message,
    Oneof,
    ParseContext,
    integer,
    message,
    string,
    unsupported,
)
from meshproxy.config.model import SocketAddress


def is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def address_spec(
    *, ip_literal: bool, protocols: tuple[str, ...] = ("TCP",), port_zero: bool = True
) -> Message[SocketAddress]:
    """The ``Address`` schema for one use.

    ip_literal: the address must be an IP (listeners, admin); clusters check this per type.
    protocols:  the accepted ``socket_address.protocol`` values (TCP is the proto default).
    port_zero:  whether port 0 is allowed (an ephemeral listener port; not for upstreams).
    """

    def build_socket(f: dict[str, Any], ctx: ParseContext, path: str) -> SocketAddress | None:
        ok = True
        protocol = f["protocol"].upper() if isinstance(f["protocol"], str) else ""
        if protocol not in protocols:
            what = "UDP" if protocol == "UDP" else repr(f["protocol"])
            expected = " or ".join(protocols)
            ctx.error(f"{path}.protocol", f"protocol {what} is not supported here (expected {expected})")
            ok = False
        if ip_literal and not is_ip_literal(f["address"]):
            ctx.error(f"{path}.address", f"expected an IP address, got {f['address']!r} (no DNS here)")
            ok = False
        if f["port_value"] == 0 and not port_zero:
            ctx.error(f"{path}.port_value", "expected a port in [1, 65535] (port 0 cannot be connected to)")
            ok = False
        return SocketAddress(f["address"], f["port_value"]) if ok else None

    socket: Message[SocketAddress] = Message(
        "envoy.config.core.v3.SocketAddress",
        fields={
            "protocol": string("TCP"),
            "address": string(required=True, min_len=1),
            "port_value": integer(0, maximum=65535),
        },
        unsupported=unsupported("named_port", "resolver_name", "ipv4_compat", "network_namespace_filepath"),
        build=build_socket,
    )
    return Message(
        "envoy.config.core.v3.Address",
        fields={"socket_address": message(socket)},
        unsupported=unsupported("pipe", "envoy_internal_address"),
        oneofs=(Oneof(("socket_address", "pipe", "envoy_internal_address"), required=True),),
        build=lambda f, ctx, path: f["socket_address"],
    )


def address_field(
    *, ip_literal: bool, protocols: tuple[str, ...] = ("TCP",), port_zero: bool = True, required: bool = True
) -> Field:
    spec = address_spec(ip_literal=ip_literal, protocols=protocols, port_zero=port_zero)
    return message(spec, required=required)


# The shapes used more than once.
LISTENER_ADDRESS = address_field(ip_literal=True)
UPSTREAM_ADDRESS = address_field(ip_literal=False, port_zero=False)
