"""The worker process: one uvloop event loop serving every listener on this worker's sockets.

A worker is forked by the main process with everything it needs already in memory:
the compiled config, its own SO_REUSEPORT socket per listener, its stats area, the
current DNS results and one end of a control channel (a SOCK_SEQPACKET socketpair
carrying msgpack messages). The event loop is created here, after the fork.

Control messages, main -> worker: ``{"t": "hosts", "c": cluster, "h": [[ip, port, weight,
priority], ...]}`` and ``{"t": "drain"}``; worker -> main: ``{"t": "ready"}``.

Signals: SIGTERM drains (stop accepting, let connections finish for ``drain_time``,
then close them and exit 0). SIGINT and SIGHUP are ignored: a terminal's Ctrl-C reaches
the main process, which stops the workers itself, and a SIGHUP sent to a worker by
mistake must not restart anything. If the main process goes away (EOF on the control
channel), the worker closes everything and exits at once: no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from typing import Any, NoReturn

import msgpack
import uvloop

from filters.api import UpstreamCallbacks
from filters.local_ratelimit.shared_bucket import HostSharedRegion
from meshproxy.config.model import Bootstrap
from workers.cluster import ClusterManager, ClusterRuntime, Host
from workers.listener import ListenerRuntime
from workers.upstream import ConnectAttempt, ConnectDone, UpstreamConnection

log = logging.getLogger("meshproxy.worker")

PR_SET_PDEATHSIG = 1


class Worker:
    """One worker's runtime state; also the ``WorkerContext`` that filter factories receive."""

    def __init__(self, index: int, bootstrap: Bootstrap, stats: Any,
                 resolved: dict[str, list[tuple[str, int, int, int]]], control: socket.socket,
                 drain_time: float, host_shared: HostSharedRegion | None = None) -> None:
        self.index = index
        # Host-wide limiter state (token buckets, connection counts) mapped by the main
        # process before the fork; set before the listeners build their filters.
        self.host_shared = host_shared
        self.bootstrap = bootstrap
        self.stats = stats
        self.control = control
        self.drain_time = drain_time
        self.loop = asyncio.get_event_loop()
        self.clusters = ClusterManager(bootstrap.clusters, stats, resolved)
        self.listeners: dict[str, ListenerRuntime] = {
            lst.name: ListenerRuntime(lst, self) for lst in bootstrap.listeners
        }
        self.draining = False
        self.stopped: asyncio.Future[None] = self.loop.create_future()

    # ----- WorkerContext ------------------------------------------------------------------

    def connect_upstream(self, cluster: ClusterRuntime, host: Host, owner: UpstreamCallbacks,
                         done: ConnectDone) -> ConnectAttempt:
        protocol = UpstreamConnection(owner, cluster, host, cluster.config.per_connection_buffer_limit_bytes)
        return ConnectAttempt(self.loop, cluster, host, protocol, done)

    # ----- lifecycle ------------------------------------------------------------------------

    async def start(self, sockets: dict[str, socket.socket], stopped: frozenset[str]) -> None:
        for name, runtime in self.listeners.items():
            if name not in stopped:  # /drain_listeners stopped it before this worker started
                await runtime.start(sockets[name])
        self.loop.add_reader(self.control.fileno(), self._on_control)
        self.loop.add_signal_handler(signal.SIGTERM, self.drain)
        self._send({"t": "ready"})

    def drain(self) -> None:
        """Stop accepting; wait for open connections up to ``drain_time``, then close them."""
        if self.draining:
            return
        self.draining = True
        log.info("worker %d draining (%d connections)", self.index, self.open_connections())
        for runtime in self.listeners.values():
            runtime.stop_accepting()
        self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        deadline = self.loop.time() + self.drain_time
        while self.open_connections() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.stop()

    def stop(self) -> None:
        for runtime in self.listeners.values():
            runtime.stop_accepting()
            runtime.close_all()
        if not self.stopped.done():
            self.stopped.set_result(None)

    def open_connections(self) -> int:
        return sum(len(r.connections) for r in self.listeners.values())

    # ----- control channel ------------------------------------------------------------------

    def _send(self, message: dict) -> None:
        with contextlib.suppress(OSError):
            self.control.send(msgpack.packb(message))

    def _on_control(self) -> None:
        try:
            data = self.control.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the main process is gone
            self.loop.remove_reader(self.control.fileno())
            log.warning("worker %d: main process went away; exiting", self.index)
            self.stop()
            return
        message = msgpack.unpackb(data)
        kind = message.get("t")
        if kind == "hosts":
            cluster = self.clusters.clusters.get(message["c"])
            if cluster is not None:
                cluster.update_hosts([tuple(h) for h in message["h"]])
        elif kind == "drain":
            self.drain()
        elif kind == "stop_listeners":
            self.loop.call_later(message["after"], self._stop_listeners, message["names"])

    def _stop_listeners(self, names: list[str]) -> None:
        for name in names:
            runtime = self.listeners.get(name)
            if runtime is not None:
                runtime.stop_accepting()


def _die_with_parent() -> None:
    """Backstop for a main process killed outright: the kernel sends us SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run(index: int, bootstrap: Bootstrap, sockets: dict[str, socket.socket], control: socket.socket,
        stats_factory: Any, resolved: dict[str, list[tuple[str, int, int, int]]],
        drain_time: float, parent_pid: int, stopped: frozenset[str] = frozenset(),
        host_shared: HostSharedRegion | None = None) -> NoReturn:
    """Entry point in the forked child; never returns into the parent's stack."""
    code = 0
    try:
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _die_with_parent()
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        control.setblocking(False)
        worker = Worker(index, bootstrap, stats_factory(), resolved, control, drain_time, host_shared)
        loop.run_until_complete(worker.start(sockets, stopped))
        loop.run_until_complete(worker.stopped)
        # Let aborted transports run their connection_lost callbacks.
        loop.run_until_complete(asyncio.sleep(0))
    except BaseException:
        log.exception("worker %d failed", index)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)
