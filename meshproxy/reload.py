"""SIGHUP handling of one main process: start new generations, coalesce, judge, step down.

The mechanism (sockets handed over, stats attached) is in ``hot_restart.py``; this module
holds the policy:

* a SIGHUP during a reload does not start a second one: it is remembered, and carried
  out once the current reload ends, by the new generation if it succeeded;
* a failed reload (bad config, crash, not ready in time) changes nothing: it is logged,
  counted (``server.hot_restart_failures``), shown in ``/server_info``, and systemd is
  told ``READY=1`` again;
* at most ``MAX_DRAINING_GENERATIONS`` old generations drain at once: each generation
  counts the newer ones (``aged``) and an older one past the cap stops at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

import msgpack

from meshproxy.hot_restart import ParentLink, ReloadAttempt, restart_argv
from meshproxy.sd_notify import monotonic_usec, notify

if TYPE_CHECKING:
    from meshproxy.server import MainProcess

log = logging.getLogger("meshproxy.reload")

# Old generations allowed to drain at once (HAProxy users learned to bound this with
# hard-stop-after): the oldest past the cap stops at once.
MAX_DRAINING_GENERATIONS = 16


class Reloader:
    """The hot-restart side of a ``MainProcess``."""

    def __init__(self, main: MainProcess, parent: ParentLink | None) -> None:
        self.main = main
        self.parent = parent
        self.attempt: ReloadAttempt | None = None
        self.pending = False
        self.child_link: socket.socket | None = None
        self.child_pid = 0
        self.age = 0  # how many newer generations exist
        self.last_result: dict[str, object] = {"result": "none", "time": None, "detail": ""}

    def start(self) -> None:
        if self.parent is not None:
            self.main.loop.add_reader(self.parent.sock.fileno(), self._on_parent_message)

    def link_fds(self) -> list[int]:
        """Descriptors a forked worker must close."""
        fds = [s.fileno() for s in (self.child_link, self.parent.sock if self.parent else None) if s]
        if self.attempt is not None:
            fds.append(self.attempt.link.fileno())
        return [fd for fd in fds if fd >= 0]

    # ----- this generation starting a newer one -----------------------------------------------

    def request(self) -> None:
        """SIGHUP: start a new generation, or remember to once the current reload ends."""
        main = self.main
        if main.stepped_down or main.stopping:
            log.info("SIGHUP ignored: this generation is %s", "draining" if main.stepped_down else "stopping")
            return
        if self.attempt is not None:
            self.pending = True
            log.info("SIGHUP during a reload: another reload follows this one")
            return
        self.pending = False
        notify("RELOADING=1", monotonic_usec(), "STATUS=hot restart: starting a new generation")
        try:
            self.attempt = ReloadAttempt(main.loop, restart_argv(), main.socket_offer(), self._done)
        except OSError as exc:
            self._done(False, f"cannot start a new generation: {exc}")

    def child_exited(self, pid: int, status: str) -> bool:
        """The reaper found ``pid``; True if it was our new generation."""
        if self.attempt is not None and pid == self.attempt.pid:
            self.attempt.child_exited(status)
            return True
        if pid == self.child_pid:  # normal when it was itself replaced and drained
            level = logging.INFO if status == "exit code 0" else logging.WARNING
            log.log(level, "the newer generation (pid %d) exited (%s)", pid, status)
            return True
        return False

    def _done(self, ok: bool, detail: str) -> None:
        attempt, self.attempt = self.attempt, None
        main = self.main
        self.last_result = {"result": "success" if ok else "failure", "detail": detail,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if not ok or attempt is None:
            main.stats.server.hot_restart_failures.inc()
            log.error("hot restart failed, this generation keeps serving: %s", detail)
            notify("READY=1", f"STATUS=hot restart failed, still serving: {detail[:200]}")
            if self.pending:
                self.request()
            return
        main.stats.server.hot_restart_successes.inc()
        log.info("hot restart: epoch %d (pid %d) is serving; this generation drains", main.epoch + 1,
                 attempt.pid)
        self.child_link = attempt.link
        self.child_pid = attempt.pid
        main.loop.add_reader(self.child_link.fileno(), self._on_child_message)
        main.step_down()
        if self.parent is not None:
            self.parent.tell({"t": "aged"})
        if self.pending:
            self._tell_child({"t": "reload"})

    def _on_child_message(self) -> None:
        message = self._read(self.child_link)
        if message is None:
            if self.child_link is not None:
                self.main.loop.remove_reader(self.child_link.fileno())
                self.child_link.close()
                self.child_link = None
        elif message.get("t") == "stop":
            self.main.shutdown()
        elif message.get("t") == "aged":
            self._aged()

    def _tell_child(self, message: dict) -> None:
        if self.child_link is not None:
            try:
                self.child_link.send(msgpack.packb(message))
            except OSError as exc:
                log.warning("hot restart channel to the new generation: %s", exc)

    def _aged(self) -> None:
        self.age += 1
        if self.parent is not None:
            self.parent.tell({"t": "aged"})
        if self.age >= MAX_DRAINING_GENERATIONS:
            log.warning("%d newer generations exist (cap %d): stopping this one now", self.age,
                        MAX_DRAINING_GENERATIONS)
            self.main.hard_stop()

    # ----- this generation as the newer one -----------------------------------------------------

    def announce_ready(self) -> None:
        """Every worker serves: tell the parent (it steps down) and systemd (we are the main PID)."""
        main = self.main
        status = f"STATUS=serving {len(main.bootstrap.listeners)} listeners with {len(main.slots)} workers"
        if self.parent is not None:
            self.parent.tell({"t": "ready"})
            notify(f"MAINPID={os.getpid()}", "READY=1", status)
        else:
            notify("READY=1", status)

    def on_shutdown(self) -> None:
        """SIGTERM reached the newest generation: the draining ones stop too."""
        notify("STOPPING=1", "STATUS=stopping: draining connections")
        if self.parent is not None:
            self.parent.tell({"t": "stop"})
        if self.attempt is not None:
            self.attempt.fail("the service is stopping")

    def _on_parent_message(self) -> None:
        assert self.parent is not None
        message = self._read(self.parent.sock)
        if message is None:  # the older generation is gone
            self.main.loop.remove_reader(self.parent.sock.fileno())
            self.parent.sock.close()
            self.parent = None
        elif message.get("t") == "reload":
            self.request()

    @staticmethod
    def _read(sock: socket.socket | None) -> dict | None:
        if sock is None:
            return None
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return {}
        except OSError:
            return None
        return msgpack.unpackb(data) if data else None
