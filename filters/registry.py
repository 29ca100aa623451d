"""Network filters are found by the ``@type`` of their ``typed_config``, as in Envoy.

Each filter package registers one ``FilterType`` when imported. The config compiler
looks a type URL up here, calls ``parse`` once to turn the YAML mapping into a frozen
config object, and each worker calls ``build`` once per listener to get a cheap
per-connection factory (stat handles and cluster references are bound there, never
looked up on the data path).

Third-party filters register the same way, from a module named with
``meshproxy --filter-module mypkg.myfilter`` or an installed entry point in the
``meshproxy.filters`` group (see docs/filters.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filters.api import NetworkFilter
    from filters.config_schema import ParseContext

TYPE_URL_PREFIX = "type.googleapis.com/"

# The filters that ship with meshproxy; imported lazily so that a codec import never
# drags the whole registry in.
BUILTIN_MODULES: tuple[str, ...] = ("filters.tcp_proxy", "filters.echo", "filters.mongo_proxy",
                                    "filters.local_ratelimit", "filters.connection_limit",
                                    "filters.ratelimit", "filters.redis_ratelimit", "filters.redis_proxy")

ENTRY_POINT_GROUP = "meshproxy.filters"


@dataclass(frozen=True, slots=True)
class FilterType:
    """A network filter's registration.

    name:      Envoy's extension name, e.g. ``envoy.filters.network.tcp_proxy``.
    message:   the proto message of its typed_config, e.g.
               ``envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy``.
    parse:     (typed_config mapping, context) -> frozen config; reports errors on the context.
    build:     (frozen config, worker context) -> zero-argument factory of per-connection filters.
    terminal:  the filter ends a chain (tcp_proxy, redis_proxy, http_connection_manager).
    """

    name: str
    message: str
    parse: Callable[[dict, ParseContext], object]
    build: Callable[..., Callable[[], NetworkFilter]]  # (its config, WorkerContext)
    terminal: bool = False


_by_message: dict[str, FilterType] = {}
_by_name: dict[str, FilterType] = {}
_loaded = False


def register(filter_type: FilterType) -> FilterType:
    """Make a filter available to configs; registering the same message twice is an error."""
    existing = _by_message.get(filter_type.message)
    if existing is not None and existing is not filter_type:
        raise ValueError(f"filter message {filter_type.message!r} is already registered")
    _by_message[filter_type.message] = filter_type
    _by_name[filter_type.name] = filter_type
    return filter_type


def load_builtin_filters(extra_modules: tuple[str, ...] = ()) -> None:
    """Import the built-in filters, installed plug-ins and ``extra_modules`` (idempotent)."""
    global _loaded
    for module in extra_modules:
        importlib.import_module(module)
    if _loaded:
        return
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    _loaded = True


def message_of(type_url: str) -> str:
    """``type.googleapis.com/a.b.C`` -> ``a.b.C`` (Envoy ignores the host part of the URL)."""
    return type_url.rsplit("/", 1)[-1]


def lookup_type_url(type_url: str) -> FilterType | None:
    """The registered filter for a ``@type`` URL, or None."""
    load_builtin_filters()
    return _by_message.get(message_of(type_url))


def lookup_name(name: str) -> FilterType | None:
    """The registered filter for an extension name (used when ``typed_config`` is absent)."""
    load_builtin_filters()
    return _by_name.get(name)


def registered_messages() -> tuple[str, ...]:
    load_builtin_filters()
    return tuple(sorted(_by_message))
