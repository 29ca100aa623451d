"""``AdminServer``: the admin endpoint of one main process, ready to start.

It ties the pieces together: an ``HttpServer`` (http.py) whose handler is a ``Router``
(routes.py) over the endpoint handlers (handlers.py), and the ``AdminStatsState`` that
keeps the flush interval and the ``/reset_counters`` baseline.

The main process::

    admin = AdminServer(self)                      # self implements AdminContext
    host, port = await admin.start("0.0.0.0", 9901)
    ...
    admin.record_flush(snapshot)                   # at every stats flush, after the sinks
    ...
    await admin.stop()                             # shutdown, or ShutdownAdmin on hot restart
"""

from __future__ import annotations

import socket

from meshproxy.admin.context import AdminContext
from meshproxy.admin.handlers import AdminHandlers
from meshproxy.admin.http import HttpServer, Limits
from meshproxy.admin.routes import Router
from meshproxy.admin.stats_view import AdminStatsState
from meshproxy.admin.tags import TagProducer
from stats_shm import Snapshot


class AdminServer:
    """The admin endpoint (see the module docstring)."""

    def __init__(self, context: AdminContext, *, limits: Limits | None = None,
                 producer: TagProducer | None = None) -> None:
        self.context = context
        self.stats = AdminStatsState()
        self.router = Router(AdminHandlers(context, self.stats, producer).routes())
        self.http = HttpServer(self.router, limits or Limits())
        self.address: tuple[str, int] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: ephemeral) or on a bound ``sock``; returns the address."""
        self.address = await self.http.start(host, port, sock=sock)
        return self.address

    async def stop(self) -> None:
        """Stop listening and close every admin connection."""
        await self.http.stop()

    def record_flush(self, snapshot: Snapshot) -> None:
        """The main process flushed ``snapshot`` to its sinks: it ends a histogram interval."""
        self.stats.record_flush(snapshot)
