"""mongo_proxy: a passive MongoDB wire-protocol sniffer (``envoy.filters.network.mongo_proxy``).

The filter sits before tcp_proxy, decodes copies of the bytes in both directions for stats and
access logs, and never alters traffic (docs/mongo.md). This package holds:

* ``codec`` -- the sans-IO decoder (``MongoDecoder``: ``feed`` bytes, ``next_message`` until
  ``NEED_DATA``; or ``summaries(data)``, the sniffer's call) and the framing rules it enforces;
* ``fastpath`` -- OP_MSG requests and replies read at predicted offsets into small tuples
  (``RequestSummary``, ``ReplySummary``): the sniffer's hot path;
* ``messages`` -- the decoded message types (frozen, slotted dataclasses), ``OpCode``,
  ``Compressor`` and ``MongoProtocolError``;
* ``rawbson`` -- BSON read in place: framing checks, a top-level walk, ``first_element`` and the
  ``DocSummary`` (command, collection, $db, comment, ok, errmsg, code, cursor id, doc count, and
  for ``find`` the fields of Envoy's per-query stats);
* ``config`` -- Envoy's ``MongoProxy`` message and meshproxy's superset of it;
* ``stats`` -- the fixed stat block and the bounded cache of per-name blocks;
* ``operations`` -- which stats a request charges (Envoy's mapping, extended to OP_MSG);
* ``access_log`` -- the JSON-lines access log;
* ``filter`` -- the per-connection sniffer and ``build``.

A codec never imports asyncio, sockets or stats. Importing this package registers two filter
types: Envoy's message and meshproxy's (the same filter, with the extension fields). The data
path (``filter``) is imported only when a worker builds a listener.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from filters import registry
from filters.mongo_proxy import config

if TYPE_CHECKING:
    from filters.api import NetworkFilter, WorkerContext


def _build(compiled: object, worker_ctx: object) -> Callable[[], NetworkFilter]:
    from filters.mongo_proxy import filter as mongo_filter

    assert isinstance(compiled, config.MongoProxyConfig), compiled
    return mongo_filter.build(compiled, cast("WorkerContext", worker_ctx))


FILTER_TYPE = registry.register(
    registry.FilterType(
        name="envoy.filters.network.mongo_proxy",
        message=config.ENVOY_MESSAGE,
        parse=config.parse,
        build=_build,
        terminal=False,
    )
)

EXTENDED_FILTER_TYPE = registry.register(
    registry.FilterType(
        name="meshproxy.filters.network.mongo_proxy",
        message=config.MESHPROXY_MESSAGE,
        parse=config.parse_extended,
        build=_build,
        terminal=False,
    )
)
