"""Listening sockets, created and owned by the main process.

Each listener gets one SO_REUSEPORT socket per worker, all bound to the same address,
so the kernel spreads new connections over the workers' own accept queues. The main
process keeps every socket open for the life of the service: a worker that dies leaves
its queue in place (connections wait there instead of being reset) and its replacement
serves the very same socket. A listener on port 0 gets its ephemeral port from the first
socket; the others bind that port.
"""

from __future__ import annotations

import socket

from meshproxy.config.model import Listener


class ListenSocketError(Exception):
    """A listener's address could not be bound; the message names the listener."""


def bind_listener(listener: Listener, count: int) -> list[socket.socket]:
    """Bind ``count`` listening sockets (one per worker) for ``listener``."""
    address = listener.address.address
    port = listener.address.port_value
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count if listener.enable_reuse_port else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if listener.enable_reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, port))
            sock.listen(listener.tcp_backlog_size)
            sock.setblocking(False)
            port = sock.getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenSocketError(
            f"listener '{listener.name}': cannot bind {listener.address}: {exc.strerror or exc}"
        ) from exc
    # Without reuse_port every worker shares the one socket (one accept queue).
    while len(sockets) < count:
        sockets.append(sockets[0])
    return sockets


def bound_port(sockets: list[socket.socket]) -> int:
    return int(sockets[0].getsockname()[1])
