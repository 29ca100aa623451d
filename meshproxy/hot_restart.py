"""Hot restart: a new main process takes over the sockets and the stats of the running one.

meshproxy is its own restarter. On SIGHUP the running main process (the *parent*)
starts a new one (the *child*) with exec, so both the config and the code on disk take
effect, and hands it every listening socket over a Unix socketpair (SCM_RIGHTS):

1. parent: ``RELOADING=1``; starts ``python -m meshproxy <same arguments>
   --restart-epoch N+1 --parent-fd FD``.
2. child: loads and validates the config; a bad one -> ``{"t": "failed", "error"}``, exit 1.
3. child -> ``{"t": "hello"}``; parent -> one ``{"t": "listener", "name", "address"}``
   message per listener carrying its per-worker sockets, ``{"t": "admin"}`` carrying the
   admin socket, then ``{"t": "state", "epoch", "first_started_at"}``.
4. child: reuses the sockets whose address is unchanged (one to one, so every
   SO_REUSEPORT accept queue survives), binds new listeners, closes what it does not
   use, attaches to the stats segment, forks its workers; once all are ready ->
   ``{"t": "ready"}`` and ``MAINPID=<child>``, ``READY=1``.
5. parent: steps down: stops accepting and closes its admin listener at once, drains
   its connections for ``--drain-time-s``, is gone by ``--parent-shutdown-time-s``.

Nothing the parent owns is closed before the child is ready, so a bad config, a crash
or a child that is not ready within ``READY_TIMEOUT_S`` leaves the running generation
untouched: the parent kills the child and reports the failure.

After the hand-over the socketpair stays open: the child forwards a SIGTERM
(``{"t": "stop"}``) and the arrival of newer generations (``{"t": "aged"}``) to the
parent, which bounds how many generations drain at once; the parent forwards a SIGHUP
that arrived during the reload (``{"t": "reload"}``) to the child.

Messages are msgpack maps in SOCK_SEQPACKET datagrams (one message, one datagram).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

log = logging.getLogger("meshproxy.hot_restart")

READY_TIMEOUT_S = 60.0  # a new generation that is not serving by then is killed
MAX_MESSAGE = 65536
MAX_FDS_PER_MESSAGE = 250  # the kernel's SCM_MAX_FD is 253


def send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = msgpack.packb(message)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the fds it carried; (None, []) at EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS_PER_MESSAGE)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return msgpack.unpackb(data), fds


# ----- the parent's side -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SocketOffer:
    """What the parent hands over: per listener (name, address, sockets), the admin socket."""

    listeners: tuple[tuple[str, str, tuple[socket.socket, ...]], ...]
    admin: socket.socket | None
    epoch: int
    first_started_at: float
    limits: int | None = None  # the host-wide rate-limit region (a memfd), so buckets carry on


class ReloadAttempt:
    """One new generation being started; ``on_done(ok, detail)`` is called exactly once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, argv: list[str], offer: SocketOffer,
                 on_done: Callable[[bool, str], None], timeout: float = READY_TIMEOUT_S) -> None:
        self.loop = loop
        self.offer = offer
        self.on_done: Callable[[bool, str], None] | None = on_done
        self.link, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [*argv, "--restart-epoch", str(offer.epoch + 1), "--parent-fd", str(child_end.fileno())]
        try:
            self.process = subprocess.Popen(command, pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        self.pid = self.process.pid
        log.info("hot restart: started epoch %d as pid %d", offer.epoch + 1, self.pid)
        self.link.setblocking(False)
        loop.add_reader(self.link.fileno(), self._on_message)
        self.timer = loop.call_later(timeout, self.fail, f"not ready within {timeout:.0f}s")

    def _on_message(self) -> None:
        try:
            message, fds = receive(self.link)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"control channel: {exc}")
            return
        for fd in fds:
            os.close(fd)
        if message is None:
            self.fail("exited before becoming ready")
        elif message.get("t") == "hello":
            self._offer_sockets()
        elif message.get("t") == "failed":
            self.fail(str(message.get("error", "failed")))
        elif message.get("t") == "ready":
            self._finish(True, "ready")

    def _offer_sockets(self) -> None:
        offer = self.offer
        for name, address, socks in offer.listeners:
            send(self.link, {"t": "listener", "name": name, "address": address}, [s.fileno() for s in socks])
        if offer.admin is not None:
            send(self.link, {"t": "admin"}, [offer.admin.fileno()])
        if offer.limits is not None:
            send(self.link, {"t": "limits"}, [offer.limits])
        send(self.link, {"t": "state", "epoch": offer.epoch + 1, "first_started_at": offer.first_started_at})

    def child_exited(self, status: str) -> None:
        """The SIGCHLD reaper saw the child exit."""
        self.fail(f"exited ({status}) before becoming ready")

    def fail(self, reason: str) -> None:
        if self.on_done is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # its workers follow it (control channel EOF)
        self._finish(False, reason)
        self.link.close()

    def _finish(self, ok: bool, detail: str) -> None:
        done, self.on_done = self.on_done, None
        if done is None:
            return
        self.timer.cancel()
        self.loop.remove_reader(self.link.fileno())
        done(ok, detail)


# ----- the child's side --------------------------------------------------------------------


@dataclass(slots=True)
class Inherited:
    """What a new generation received from its parent."""

    listeners: dict[str, list[socket.socket]] = field(default_factory=dict)  # address -> per-worker sockets
    admin: socket.socket | None = None
    limits_fd: int | None = None
    epoch: int = 0
    first_started_at: float = 0.0

    def take_listener(self, address: str) -> list[socket.socket] | None:
        return self.listeners.pop(address, None)

    def close_unused(self) -> None:
        """Sockets of listeners the new config removed: our copies go; the parent's die with it."""
        for socks in self.listeners.values():
            for sock in set(socks):
                sock.close()
        self.listeners.clear()


class ParentLink:
    """The child's end of the socketpair to the generation it replaces."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)

    def fail(self, error: str) -> None:
        with contextlib.suppress(OSError):
            send(self.sock, {"t": "failed", "error": error[:60000]})

    def handshake(self, timeout: float = 30.0) -> Inherited:
        """Say hello and receive the sockets (blocking: nothing else runs yet)."""
        self.sock.settimeout(timeout)
        send(self.sock, {"t": "hello"})
        inherited = Inherited()
        while True:
            message, fds = receive(self.sock)
            if message is None:
                raise ConnectionError("the running generation closed the hot-restart channel")
            kind = message.get("t")
            if kind == "listener":
                inherited.listeners[str(message["address"])] = [socket.socket(fileno=fd) for fd in fds]
            elif kind == "admin" and fds:
                inherited.admin = socket.socket(fileno=fds[0])
            elif kind == "limits" and fds:
                inherited.limits_fd = fds[0]
            elif kind == "state":
                inherited.epoch = int(message["epoch"])
                inherited.first_started_at = float(message["first_started_at"])
                self.sock.settimeout(None)
                self.sock.setblocking(False)
                return inherited
            else:
                for fd in fds:
                    os.close(fd)

    def tell(self, message: dict) -> None:
        try:
            send(self.sock, message)
        except OSError as exc:
            log.debug("hot restart channel: %s", exc)


def restart_argv() -> list[str]:
    """How to start the next generation: the same interpreter and arguments, minus our own
    hot-restart flags (re-added with new values)."""
    args: list[str] = []
    skip = False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--restart-epoch", "--parent-fd"):
            skip = True
            continue
        if arg.startswith(("--restart-epoch=", "--parent-fd=")):
            continue
        args.append(arg)
    return [sys.executable, "-m", "meshproxy", *args]
