"""Rate-limit descriptors: the (key, value) lists a connection is counted under.

Envoy's ``extensions.common.ratelimit.v3.RateLimitDescriptor`` as the network ratelimit
filter uses it: ``descriptors[{entries[{key, value}]}]``, sent with every decision. A
value may hold Envoy command operators, substituted per connection, so that a limit can
be per client (``%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%``). meshproxy knows the
connection-level ones below; any other ``%OPERATOR%`` is a config error, never passed
through literally. Values without operators are compiled once and shared by every
connection.

A resolved descriptor is a tuple of ``(key, value)`` pairs; a request is a tuple of
those. Both filters of this family use this module: ``ratelimit`` (gRPC) and
``redis_ratelimit``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from filters.api import ConnectionInfo
from filters.config_schema import Field, Message, ParseContext, join, repeated, string, unsupported

Entries = tuple[tuple[str, str], ...]
Descriptors = tuple[Entries, ...]
Operator = Callable[[ConnectionInfo], str]


def _host(address: tuple[str, int]) -> str:
    return address[0]


def _host_port(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Envoy's names (docs: "Access logging > Command operators").
OPERATORS: Final[Mapping[str, Operator]] = {
    "DOWNSTREAM_REMOTE_ADDRESS": lambda info: _host_port(info.remote_address),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda info: _host(info.remote_address),
    "DOWNSTREAM_REMOTE_PORT": lambda info: str(info.remote_address[1]),
    "DOWNSTREAM_LOCAL_ADDRESS": lambda info: _host_port(info.local_address),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda info: _host(info.local_address),
    "DOWNSTREAM_LOCAL_PORT": lambda info: str(info.local_address[1]),
}
_OPERATOR = re.compile(r"%([A-Z0-9_]+)(?:\([^%]*\))?%")


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    parts: tuple[str | Operator, ...]  # literal text and operators, in order

    @property
    def static(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def value(self, info: ConnectionInfo | None) -> str:
        if info is None:
            return "".join(p for p in self.parts if isinstance(p, str))
        return "".join(p if isinstance(p, str) else p(info) for p in self.parts)


def _compile_value(value: str, ctx: ParseContext, path: str) -> tuple[str | Operator, ...] | None:
    parts: list[str | Operator] = []
    pos, ok = 0, True
    for m in _OPERATOR.finditer(value):
        if m.start() > pos:
            parts.append(value[pos:m.start()])
        op = OPERATORS.get(m.group(1)) if m.group(0) == f"%{m.group(1)}%" else None
        if op is None:
            ctx.error(path, f"command operator '{m.group(0)}' is not supported by meshproxy in descriptor "
                      f"values (supported: {', '.join('%' + n + '%' for n in OPERATORS)})")
            ok = False
        else:
            parts.append(op)
        pos = m.end()
    if pos < len(value):
        parts.append(value[pos:])
    return tuple(parts) if ok else None


def _build_entry(f: dict[str, Any], ctx: ParseContext, path: str) -> Entry | None:
    parts = _compile_value(f["value"], ctx, join(path, "value"))
    return None if parts is None else Entry(f["key"], parts)


ENTRY: Message[Entry] = Message(
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry",
    fields={"key": string(required=True, min_len=1), "value": string(required=True, min_len=1)},
    build=_build_entry,
)

DESCRIPTOR: Message[tuple[Entry, ...]] = Message(
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor",
    fields={"entries": repeated(ENTRY, min_items=1)},
    unsupported=unsupported("limit", "hits_addend"),
    build=lambda f, ctx, path: f["entries"],
)


@dataclass(frozen=True, slots=True)
class DescriptorSet:
    """The descriptors a filter sends per connection, compiled once."""

    descriptors: tuple[tuple[Entry, ...], ...]

    @property
    def static(self) -> bool:
        return all(e.static for d in self.descriptors for e in d)

    def resolve(self, info: ConnectionInfo | None) -> Descriptors:
        """The (key, value) lists for one connection (``info`` None: static values only)."""
        return tuple(tuple((e.key, e.value(info)) for e in d) for d in self.descriptors)


def descriptor_set() -> Field:
    """The ``descriptors`` field: at least one descriptor, compiled to a ``DescriptorSet``."""
    inner = repeated(DESCRIPTOR, min_items=1)

    def parse(value: object, ctx: ParseContext, path: str) -> DescriptorSet:
        return DescriptorSet(inner.parse(value, ctx, path))

    return Field(parse, None, required=True)
