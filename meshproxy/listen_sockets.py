"""Listening sockets, created and owned by the main process.

Each listener gets one SO_REUSEPORT socket per worker, all bound to the same address,
so the kernel spreads new connections over the workers' own accept queues. The main
process keeps every socket open for the life of its generation: a worker that dies
leaves its queue in place (connections wait there instead of being reset) and its
replacement serves the very same socket. A hot restart hands the sockets to the next
generation one to one (``adopt_listener``), so no queue is ever closed. A listener on
port 0 gets its ephemeral port from the first socket; the others bind that port.
"""

from __future__ import annotations

import socket

from meshproxy.config.model import Listener


class ListenSocketError(Exception):
    """A listener's address could not be bound; the message names the listener."""


def _bind(listener: Listener, port: int, count: int) -> list[socket.socket]:
    address = listener.address.address
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
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
    return sockets


def bind_listener(listener: Listener, count: int) -> list[socket.socket]:
    """Bind ``count`` listening sockets (one per worker) for ``listener``."""
    if not listener.enable_reuse_port:  # every worker shares the one socket (one accept queue)
        return _bind(listener, listener.address.port_value, 1) * count
    return _bind(listener, listener.address.port_value, count)


def adopt_listener(listener: Listener, handed: list[socket.socket], count: int) -> list[socket.socket]:
    """Use the sockets a previous generation handed over, one per worker, as they are.

    More workers than before: the extra sockets join the same SO_REUSEPORT group. Fewer:
    our copies of the extra ones are closed (connections queued on them are lost when
    the old generation exits, as in Envoy).
    """
    for sock in handed:
        sock.setblocking(False)
    if not listener.enable_reuse_port:
        return [handed[0]] * count
    sockets = handed[:count]
    for extra in handed[count:]:
        if all(extra is not s for s in sockets):
            extra.close()
    if len(sockets) < count:
        sockets += _bind(listener, sockets[0].getsockname()[1], count - len(sockets))
    return sockets


def bind_admin_socket(address: str, port: int) -> socket.socket:
    """The admin endpoint's listening socket (one, in the main process)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"admin: cannot bind {address}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    return sock


def bound_to(sock: socket.socket, address: str, port: int) -> bool:
    """Whether ``sock`` is bound to ``address:port`` (any port when ``port`` is 0)."""
    bound = sock.getsockname()
    return bool(bound[0] == address and (port == 0 or bound[1] == port))
