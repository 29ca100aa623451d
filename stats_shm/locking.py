"""The segment lock: ``flock`` on ``<segment>.lock``, fork-aware, never on the hot path.

Taken exclusively to allocate a name, claim an area or fold one; taken shared by a
reader that refreshes its name index. A process that dies holding it releases it (the
kernel drops ``flock`` locks with the last descriptor), which is how a later writer
knows a fold left half-done was interrupted and can finish it (see areas.py).

Two details make ``flock`` correct here:

* ``flock`` locks belong to an open file *description*, which ``fork`` shares: a worker
  locking its inherited descriptor would not exclude its parent, and unlocking it would
  release the parent's lock. So each process opens the lock file itself the first time
  it locks (detected by pid).
* Threads of one process share that descriptor, so a ``threading.Lock`` serializes them
  before ``flock`` is called.

Locks do not nest: code that holds the lock calls only ``*_locked`` helpers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator


class SegmentLock:
    """An inter-process (and inter-thread) lock on a lock file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid = -1
        self._fd = -1
        self._threads = threading.Lock()
        self._fd_for_this_process()  # fail early if the lock file cannot be opened

    def _fd_for_this_process(self) -> int:
        pid = os.getpid()
        if self._pid != pid:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)  # the parent's description: closing ours keeps its lock
            self._threads = threading.Lock()
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self._pid = pid
        return self._fd

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock exclusively (blocking)."""
        fd = self._fd_for_this_process()
        with self._threads:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def shared(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock shared; with ``timeout`` raise ``TimeoutError`` after that many seconds."""
        fd = self._fd_for_this_process()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._threads.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"{self.path}: lock busy")
        try:
            self._flock_until(fd, fcntl.LOCK_SH, deadline)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    @contextlib.contextmanager
    def try_exclusive(self) -> Iterator[bool]:
        """Take the lock exclusively if it is free now; yields whether it was taken."""
        fd = self._fd_for_this_process()
        if not self._threads.acquire(blocking=False):
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _flock_until(self, fd: int, op: int, deadline: float | None) -> None:
        if deadline is None:
            fcntl.flock(fd, op)
            return
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.path}: lock busy") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.01)

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = -1
        self._pid = -1
