"""A listener inside one worker: accepts on the worker's own SO_REUSEPORT socket.

The main process created the socket and keeps its own copy open for the life of the
service; the worker serves it with ``loop.create_server(sock=...)`` (uvloop accepts in
C). Closing it here on drain only closes the worker's copy, so connections queued in
the kernel backlog wait for the replacement worker instead of being reset.

The filter chain is compiled once per worker into a list of per-connection factories,
so accepting a connection costs one call per filter.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from filters.registry import lookup_type_url
from meshproxy.config.model import Listener
from workers.connection import DownstreamConnection
from workers.stat_names import ListenerStats, ListenerWorkerStats, sanitize

if TYPE_CHECKING:
    from filters.api import NetworkFilter

log = logging.getLogger("meshproxy.listener")


def listener_stat_root(listener: Listener) -> str:
    """``listener.<stat_prefix or sanitized ip:port>.`` as Envoy names it."""
    if listener.stat_prefix:
        return f"listener.{listener.stat_prefix}."
    return f"listener.{sanitize(str(listener.address))}."


class ListenerRuntime:
    """Accepts connections for one listener in one worker and tracks them for draining."""

    def __init__(self, config: Listener, worker: Any) -> None:
        self.config = config
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop = worker.loop
        root = listener_stat_root(config)
        self.stats = ListenerStats(worker.stats, root)
        self.worker_stats = ListenerWorkerStats(worker.stats, f"{root}worker_{worker.index}.")
        self.factories: list[Callable[[], NetworkFilter]] = []
        for fc in config.filter_chain.filters:
            filter_type = lookup_type_url(fc.type_url)
            assert filter_type is not None, fc.type_url  # the config compiler checked it
            self.factories.append(filter_type.build(fc.config, worker))
        self.connections: set[DownstreamConnection] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        self.server = await self.loop.create_server(
            self._new_connection, sock=sock, backlog=self.config.tcp_backlog_size
        )

    def _new_connection(self) -> DownstreamConnection:
        return DownstreamConnection(self, [make() for make in self.factories])

    def on_connection_open(self, conn: DownstreamConnection) -> None:
        self.connections.add(conn)
        self.stats.downstream_cx_total.inc()
        self.stats.downstream_cx_active.inc()
        self.worker_stats.downstream_cx_total.inc()
        self.worker_stats.downstream_cx_active.inc()

    def on_connection_closed(self, conn: DownstreamConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.stats.downstream_cx_destroy.inc()
            self.stats.downstream_cx_active.dec()
            self.worker_stats.downstream_cx_active.dec()
            if conn.info is not None:
                self.stats.downstream_cx_length_ms.record((time.monotonic() - conn.info.start_time) * 1000.0)

    def stop_accepting(self) -> None:
        """Stop accepting; open connections go on (the drain)."""
        if self.server is not None:
            self.server.close()
            self.server = None

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close(flush=False)
