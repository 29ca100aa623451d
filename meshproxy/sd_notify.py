"""systemd's notify protocol (``Type=notify``): datagrams to ``$NOTIFY_SOCKET``.

Sequence (see docs/operations.md): ``READY=1`` once every worker serves; around a hot
restart ``RELOADING=1`` with ``MONOTONIC_USEC``, then ``READY=1`` from the new main process
together with ``MAINPID=`` (only once it is ready), or ``READY=1`` from the old one if the
reload failed; ``STATUS=`` lines say what is going on; ``STOPPING=1`` on shutdown.
Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("meshproxy.sd_notify")


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` fields in one datagram; False when not under systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False
    return True


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=`` as systemd wants it next to ``RELOADING=1`` (CLOCK_MONOTONIC)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
