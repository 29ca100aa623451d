"""Host-wide limiter state: token buckets and connection counts shared by every worker process.

Why: meshproxy runs one process per worker, so a token bucket kept in a worker's memory
would admit ``max_tokens`` *per worker*, multiplying the limit by the worker count
(envoy #13517, #13528). The limit must be per host, so the state lives in one small
shared-memory region that every worker maps.

The region
----------
A ``memfd`` (an anonymous tmpfs file: nothing in /dev/shm to name, own, clean up or
leave behind after a crash) that the main process creates and maps **before forking**;
workers inherit the mapping and the descriptor. It is sparse: only touched pages use
memory. Layout, all aligned int64 cells::

    page 0          header: magic, layout version, slot count, cells per slot, slots in use
    page 1 + i      slot i (one page each), first cells:
                    [0] kind (0 free, 1 token bucket, 2 connection count)
                    [1:3] the slot's key: a 128-bit BLAKE2b digest of its config key
                    token bucket:     [3] tokens, [4] fill anchor (CLOCK_MONOTONIC ns),
                                      [5] max_tokens, [6] tokens_per_fill, [7] fill_interval ns
                    connection count: [3] total, [4] holder cells in use, [5] last reclaim (ns),
                                      then from [8] (pid, count) pairs, one per process

Slots are allocated on first use by key (the config compiler makes the key: the filter's
YAML path or ``share_key`` plus its parameters), so the main process needs to know nothing
about filters, and a replacement worker finds its predecessor's bucket.

Concurrency
-----------
Python has no atomic compare-and-swap on shared memory (a ``ctypes`` call into libatomic
costs more than a lock here), so every read-modify-write runs under an exclusive
``flock`` on the region. ``flock`` belongs to an open file *description*, which ``fork``
shares, so each process takes it on its own description (``/proc/self/fd/N`` reopened
once per process). The kernel drops the lock of a process that dies, so a worker killed
inside the critical section cannot wedge the others. The critical section is a few cell
reads and writes; the measured cost of a decision is in bench/RESULTS.md. One path takes
no lock: an empty bucket with no fill due refuses at once (see ``try_take`` for why that
read is safe), so a flood of connections over the limit costs no system call each.

Refill is lazy, with Envoy's timer semantics: the bucket starts full, and every whole
``fill_interval`` since the anchor adds ``tokens_per_fill`` (capped at ``max_tokens``).
A taker computes the fills due from CLOCK_MONOTONIC, which is one clock for the whole
host, and moves the anchor by whole intervals, so no timer process is needed and the fill
phase never drifts.

Connection counts keep, next to the total, one cell per process holding its own share.
A worker that dies with connections open leaves its share in the total; when the total
is at the limit, the holders whose process no longer exists (``kill(pid, 0)``) are folded
out, and a new worker reclaims dead holders when it claims its own. (A recycled pid would
hide a dead holder until that process exits too.)
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import time
from typing import Final

# CLOCK_MONOTONIC: one clock for every process on the host (a module global, so tests can fake it).
monotonic_ns = time.monotonic_ns

MAGIC: Final = int.from_bytes(b"MPXLIMIT", "little")
LAYOUT_VERSION: Final = 1
PAGE: Final = mmap.PAGESIZE
SLOT_CELLS: Final = PAGE // 8
DEFAULT_SLOTS: Final = 512  # 2 MiB of address space with 4 KiB pages; sparse

# header cells
_H_MAGIC, _H_VERSION, _H_SLOTS, _H_SLOT_CELLS, _H_USED = range(5)
# slot cells
_KIND, _KEY0, _KEY1, _TOKENS, _ANCHOR, _MAX, _PER_FILL, _INTERVAL = range(8)
_TOTAL, _HOLDERS_USED, _LAST_RECLAIM = 3, 4, 5
_HOLDERS = 8
# At the limit, dead holders are looked for at most this often (a dead worker is rare;
# a flood of rejected connections must not pay a scan each).
RECLAIM_INTERVAL_NS: Final = 1_000_000_000
MAX_HOLDERS: Final = (SLOT_CELLS - _HOLDERS) // 2

_LOCK_EX: Final = fcntl.LOCK_EX
_LOCK_UN: Final = fcntl.LOCK_UN

KIND_FREE: Final = 0
KIND_BUCKET: Final = 1
KIND_CONNECTIONS: Final = 2


class SharedStateError(Exception):
    """The region is full, damaged, or a process holder table is exhausted."""


def key_digest(key: str) -> tuple[int, int]:
    """The 128-bit slot key of a config key, as two signed int64 cells."""
    raw = hashlib.blake2b(key.encode(), digest_size=16).digest()
    return int.from_bytes(raw[:8], "little", signed=True), int.from_bytes(raw[8:], "little", signed=True)


def refill(tokens: int, anchor: int, now: int, max_tokens: int, per_fill: int,
           interval: int) -> tuple[int, int]:
    """Envoy's fill timer, applied lazily: (tokens, anchor) after the fills due at ``now``.

    Every whole ``interval`` (ns) since ``anchor`` adds ``per_fill`` tokens, capped at
    ``max_tokens``; the anchor moves by whole intervals so the fill phase is kept. A ``now``
    before the anchor (a process that read the clock before another moved the anchor)
    changes nothing.
    """
    elapsed = now - anchor
    if elapsed < interval:
        return tokens, anchor
    fills = elapsed // interval
    return min(max_tokens, tokens + fills * per_fill), anchor + fills * interval


class HostSharedRegion:
    """The shared region; created by the main process before it forks the workers."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        size = os.fstat(fd).st_size
        self._mmap = mmap.mmap(fd, size)
        self._cells = memoryview(self._mmap).cast("q")
        cells = self._cells
        header = (cells[_H_MAGIC], cells[_H_VERSION], cells[_H_SLOT_CELLS])
        if header != (MAGIC, LAYOUT_VERSION, SLOT_CELLS):
            raise SharedStateError("not a meshproxy limits region of this layout version")
        self.slots = int(cells[_H_SLOTS])
        self._lock_pid = -1
        self._lock_fd = -1

    @classmethod
    def create(cls, name: str = "meshproxy_limits", slots: int = DEFAULT_SLOTS) -> HostSharedRegion:
        """A new, empty region (a memfd named ``name``, visible in /proc/<pid>/fd)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, PAGE * (1 + slots))
        with mmap.mmap(fd, PAGE) as header:
            view = memoryview(header).cast("q")
            view[_H_VERSION] = LAYOUT_VERSION
            view[_H_SLOTS] = slots
            view[_H_SLOT_CELLS] = SLOT_CELLS
            view[_H_MAGIC] = MAGIC
            view.release()
        return cls(fd)

    @classmethod
    def adopt(cls, fd: int) -> HostSharedRegion:
        """Map a region whose descriptor was handed over (e.g. to a hot-restart child)."""
        return cls(fd)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Unmap and close (the memory goes away with the last process that maps it)."""
        self._cells.release()
        self._mmap.close()
        if self._lock_fd >= 0 and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        os.close(self._fd)

    # ----- locking ------------------------------------------------------------------------

    def lock_fd(self) -> int:
        """This process's own open file description of the region, for ``flock``."""
        pid = os.getpid()
        if self._lock_pid != pid:
            # The inherited description is shared with the parent: never flock through it.
            self._lock_fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC)
            self._lock_pid = pid
        return self._lock_fd

    # ----- slots --------------------------------------------------------------------------

    def _claim_slot(self, key: str, kind: int) -> tuple[int, bool]:
        """(first cell of the slot for ``key``, whether it was just created); caller holds the lock."""
        k0, k1 = key_digest(f"{kind}:{key}")
        cells = self._cells
        used = cells[_H_USED]
        for i in range(used):
            base = SLOT_CELLS * (1 + i)
            if cells[base + _KIND] == kind and cells[base + _KEY0] == k0 and cells[base + _KEY1] == k1:
                return base, False
        if used >= self.slots:
            raise SharedStateError(f"all {self.slots} limiter slots are in use")
        base = SLOT_CELLS * (1 + used)
        cells[base + _KEY0] = k0
        cells[base + _KEY1] = k1
        cells[base + _KIND] = kind
        cells[_H_USED] = used + 1
        return base, True

    def token_bucket(self, key: str, max_tokens: int, tokens_per_fill: int,
                     fill_interval: float) -> SharedTokenBucket:
        """The host-wide bucket for ``key`` (created full on first use); call in the using process."""
        if max_tokens < 1 or tokens_per_fill < 1 or fill_interval <= 0:
            raise ValueError("a token bucket needs max_tokens >= 1, tokens_per_fill >= 1, fill_interval > 0")
        interval = max(1, round(fill_interval * 1e9))
        fd = self.lock_fd()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            base, created = self._claim_slot(f"{key}|{max_tokens}|{tokens_per_fill}|{interval}", KIND_BUCKET)
            if created:
                cells = self._cells
                cells[base + _MAX] = max_tokens
                cells[base + _PER_FILL] = tokens_per_fill
                cells[base + _INTERVAL] = interval
                cells[base + _ANCHOR] = monotonic_ns()
                cells[base + _TOKENS] = max_tokens
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return SharedTokenBucket(self._cells, base, fd)

    def connection_counter(self, key: str) -> SharedConnectionCounter:
        """This process's handle on the host-wide count for ``key``; call in the using process."""
        fd = self.lock_fd()
        pid = os.getpid()
        cells = self._cells
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            base, _ = self._claim_slot(key, KIND_CONNECTIONS)
            _reclaim_dead_holders(cells, base)
            holder = -1
            used = cells[base + _HOLDERS_USED]
            for h in range(used):
                cell = base + _HOLDERS + 2 * h
                if cells[cell] == pid:
                    holder = cell
                    break
                if holder < 0 and cells[cell] == 0:
                    holder = cell
            if holder < 0:
                if used >= MAX_HOLDERS:
                    raise SharedStateError(f"more than {MAX_HOLDERS} processes share one connection limit")
                holder = base + _HOLDERS + 2 * used
                cells[base + _HOLDERS_USED] = used + 1
            cells[holder] = pid
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return SharedConnectionCounter(cells, base, holder, fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reclaim_dead_holders(cells: memoryview, base: int) -> int:
    """Fold out the shares of processes that no longer exist; returns how many were removed."""
    removed = 0
    cells[base + _LAST_RECLAIM] = monotonic_ns()
    for h in range(cells[base + _HOLDERS_USED]):
        cell = base + _HOLDERS + 2 * h
        pid = cells[cell]
        if pid and not _pid_alive(pid):
            removed += cells[cell + 1]
            cells[base + _TOTAL] -= cells[cell + 1]
            cells[cell + 1] = 0
            cells[cell] = 0
    return removed


class SharedTokenBucket:
    """One host-wide token bucket; ``try_take`` is the per-connection hot path."""

    __slots__ = ("_base", "_cells", "_fd")

    def __init__(self, cells: memoryview, base: int, fd: int) -> None:
        self._cells = cells
        self._base = base
        self._fd = fd

    def try_take(self) -> bool:
        """Take one token if there is one (after the fills that are due)."""
        cells, base = self._cells, self._base
        # Lock-free reject of an empty bucket, so that a flood of connections over the limit
        # costs no system call. Safe because writers (under the lock) store TOKENS before
        # ANCHOR and this reads ANCHOR before TOKENS: seeing the new anchor implies seeing
        # the tokens written with it (x86-64 keeps stores and loads in order).
        fill_due = monotonic_ns() - cells[base + _ANCHOR] >= cells[base + _INTERVAL]
        if not fill_due and cells[base + _TOKENS] <= 0:
            return False
        fd = self._fd
        fcntl.flock(fd, _LOCK_EX)
        try:
            tokens = cells[base + _TOKENS]
            anchor = cells[base + _ANCHOR]
            now = monotonic_ns()
            filled = now - anchor >= cells[base + _INTERVAL]  # rare: once per interval
            if filled:
                tokens, anchor = refill(tokens, anchor, now, cells[base + _MAX], cells[base + _PER_FILL],
                                        cells[base + _INTERVAL])
            took = tokens > 0
            cells[base + _TOKENS] = tokens - 1 if took else tokens
            if filled:
                cells[base + _ANCHOR] = anchor
            return took
        finally:
            fcntl.flock(fd, _LOCK_UN)

    def tokens(self) -> int:
        """Tokens left now (fills due included), without taking one."""
        cells, base = self._cells, self._base
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            tokens, _ = refill(cells[base + _TOKENS], cells[base + _ANCHOR], monotonic_ns(),
                               cells[base + _MAX], cells[base + _PER_FILL], cells[base + _INTERVAL])
            return tokens
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


class SharedConnectionCounter:
    """One process's handle on a host-wide count of open connections."""

    __slots__ = ("_base", "_cells", "_fd", "_holder")

    def __init__(self, cells: memoryview, base: int, holder: int, fd: int) -> None:
        self._cells = cells
        self._base = base
        self._holder = holder
        self._fd = fd

    def acquire(self, limit: int) -> bool:
        """Count one more connection; True if the host-wide total was below ``limit`` before.

        The connection is counted either way: Envoy keeps a rejected connection in the
        count until it closes, so every ``acquire`` is matched by one ``release``.
        """
        cells, base, fd = self._cells, self._base, self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            total = cells[base + _TOTAL]
            if (total >= limit and monotonic_ns() - cells[base + _LAST_RECLAIM] >= RECLAIM_INTERVAL_NS
                    and _reclaim_dead_holders(cells, base)):
                total = cells[base + _TOTAL]
            cells[base + _TOTAL] = total + 1
            cells[self._holder + 1] += 1
            return total < limit
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def release(self) -> None:
        """One counted connection closed."""
        cells, fd = self._cells, self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            cells[self._base + _TOTAL] -= 1
            cells[self._holder + 1] -= 1
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def total(self) -> int:
        """The host-wide count now."""
        return int(self._cells[self._base + _TOTAL])

    def own(self) -> int:
        """This process's share of it."""
        return int(self._cells[self._holder + 1])


_private: HostSharedRegion | None = None


def region_of(worker: object) -> HostSharedRegion:
    """The worker's host-wide region (``worker.host_shared``, set by the main process).

    A worker context without one (a unit test, an embedding that forks no workers) gets a
    region private to its process: limits then hold per process, which is logged.
    """
    global _private
    region = getattr(worker, "host_shared", None)
    if isinstance(region, HostSharedRegion):
        return region
    if _private is None:
        import logging

        logging.getLogger("meshproxy.limits").warning(
            "no host-wide limiter region from the main process: limits hold per process")
        _private = HostSharedRegion.create("meshproxy_limits_private")
    return _private
