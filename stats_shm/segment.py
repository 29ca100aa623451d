"""The stats segment of one meshproxy instance: a file in /dev/shm every process maps.

Why a plain file + ``mmap`` and not ``multiprocessing.shared_memory``: on Python 3.11
``SharedMemory`` registers the segment with the resource tracker, which unlinks it when
the creating process exits (fatal for a hot restart, where a new main process takes
over), and it offers no way to set ownership and mode or to keep a lock file next to it.
A file in ``/dev/shm`` (tmpfs) is the same memory, sparse until written, and can be
``fchown``-ed, atomically replaced with ``rename`` and locked with ``flock``.

Files: ``<directory>/meshproxy_stats_<base_id>`` and ``…_<base_id>.lock``.

Lifecycle and policy:

* ``Segment.create`` (the main process of restart epoch 0) always builds a *new* segment
  in a temporary file and renames it over the path, so a stale segment of a crashed run
  (or a foreign file) is replaced atomically; a process still mapping the old file keeps
  its private copy and disturbs nothing.
* ``Segment.attach`` (a hot-restart main process, the CLI, tests) maps the existing
  segment after checking its header (``StatsLayoutError`` on any mismatch) and continues
  the same counters. ``read_only=True`` needs only read permission.
* The main process claims an area per process *before* forking it
  (``claim_area``), the child writes through ``store(area)``, and once the child has
  exited (reaped) the main process calls ``release_area`` to fold it (see areas.py).
  Never release the area of a process that may still write.
* ``snapshot`` reads everything consistently without blocking writers.

``create``, ``attach``, ``claim_area``, ``release_area`` and name allocation take the
segment lock (locking.py); incrementing stats never does.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from typing import Final, NamedTuple

from stats_shm.areas import AreaInfo, AreaTable
from stats_shm.kinds import Kind, Unit
from stats_shm.layout import PAGE, H, Layout, StatsLayoutError, StatsSegmentError
from stats_shm.locking import SegmentLock
from stats_shm.names import (
    RESERVED,
    RESERVED_HISTOGRAMS,
    RESERVED_SCALARS,
    Entry,
    NameIndex,
    SharedNames,
    used_names,
)
from stats_shm.snapshot import Snapshot, build_snapshot, sum_areas
from stats_shm.store import Accept, AreaViews, StatsStore

DEFAULT_DIRECTORY: Final = "/dev/shm"
NAME_PREFIX: Final = "meshproxy_stats_"
DEFAULT_NAME_BYTES_PER_SLOT: Final = 64


class Usage(NamedTuple):
    """Slots and name bytes allocated so far, against their budgets (``*_slots`` and
    ``name_bytes_budget`` include the reserved ``stats.*`` stats)."""

    scalars: int
    scalar_slots: int
    histograms: int
    histogram_slots: int
    name_bytes: int
    name_bytes_budget: int
    reserved_scalars: int
    reserved_histograms: int


def segment_path(base_id: int, directory: str = DEFAULT_DIRECTORY) -> str:
    """Where the segment of ``base_id`` lives."""
    return os.path.join(directory, f"{NAME_PREFIX}{base_id}")


class Segment:
    """One mapped stats segment (see the module docstring)."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, layout: Layout, lock: SegmentLock,
                 read_only: bool, accept: Accept | None) -> None:
        self.path = path
        self.layout = layout
        self.read_only = read_only
        self._fd = fd
        self._mm = mm
        self._lock = lock
        self._accept = accept
        self._mv = memoryview(mm)
        self._q = self._mv.cast("Q")
        self._i64 = self._mv.cast("q")
        self._d: memoryview[float] = self._mv.cast("d")
        self._names = SharedNames(layout, self._mv, self._q)
        self._index = NameIndex()
        self._areas = AreaTable(layout, self._q, self._d)
        self._stores: dict[tuple[int, int], StatsStore] = {}

    # ----- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, base_id: int, *, slot_budget: int = 16384, histogram_budget: int = 1024, areas: int = 64,
               name_bytes: int | None = None, directory: str = DEFAULT_DIRECTORY, uid: int | None = None,
               gid: int | None = None, mode: int = 0o640, accept: Accept | None = None) -> Segment:
        """Create a fresh segment for ``base_id``, replacing any existing one.

        ``slot_budget`` counters+gauges and ``histogram_budget`` histograms can be named
        (plus the reserved ``stats.*`` ones); ``name_bytes`` bounds the UTF-8 bytes of all
        names (default 64 per slot). ``areas`` processes can write at once. ``uid``/``gid``
        chown the files; ``accept`` is the stats matcher for stores of this object.
        Raises ``StatsSegmentError`` if the directory has too little free space for the
        whole segment (tmpfs would otherwise kill a process with SIGBUS later).
        """
        scalar_cap = slot_budget + RESERVED_SCALARS
        hist_cap = histogram_budget + RESERVED_HISTOGRAMS
        if name_bytes is None:
            name_bytes = DEFAULT_NAME_BYTES_PER_SLOT * (scalar_cap + hist_cap)
        layout = Layout.compute(scalar_cap, hist_cap, areas, name_bytes)
        path = segment_path(base_id, directory)
        fs = os.statvfs(directory)
        free = fs.f_bavail * fs.f_frsize
        if layout.total_bytes > free:
            raise StatsSegmentError(
                f"{path}: the stats segment needs {layout.total_bytes >> 20} MiB but {directory} has "
                f"{free >> 20} MiB free; lower the stat budgets or areas, or enlarge {directory}"
            )
        lock_path = path + ".lock"
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            os.fchmod(lock_fd, mode)
            if uid is not None or gid is not None:
                os.fchown(lock_fd, -1 if uid is None else uid, -1 if gid is None else gid)
        finally:
            os.close(lock_fd)
        lock = SegmentLock(lock_path)
        tmp = f"{path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with lock.exclusive():
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            try:
                os.fchmod(fd, mode)
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
                os.ftruncate(fd, layout.total_bytes)
                mm = mmap.mmap(fd, layout.total_bytes)
                seg = cls(path, fd, mm, layout, lock, False, accept)
                layout.write_header(seg._q, base_id, time.time_ns(), os.getpid())
                for name, kind, unit in RESERVED:
                    entry = seg._names.allocate(name, kind, unit)
                    assert entry is not None, "budgets too small for the reserved stats"
                os.rename(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                os.close(fd)
                raise
        return seg

    @classmethod
    def attach(cls, base_id: int, *, directory: str = DEFAULT_DIRECTORY, read_only: bool = False,
               accept: Accept | None = None) -> Segment:
        """Map the existing segment of ``base_id`` (``FileNotFoundError`` if none).

        Raises ``StatsLayoutError`` if it was written with another layout. A writable
        attach finishes a fold interrupted by a crash, if any.
        """
        path = segment_path(base_id, directory)
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            layout = Layout.validate(os.pread(fd, PAGE, 0), size, path)
            prot = mmap.PROT_READ if read_only else mmap.PROT_READ | mmap.PROT_WRITE
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
            lock_path = path + ".lock"
            if not read_only:
                os.close(os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))
            seg = cls(path, fd, mm, layout, SegmentLock(lock_path), read_only, accept)
        except BaseException:
            os.close(fd)
            raise
        if not read_only:
            with seg._lock.exclusive():
                seg._refresh_locked()
        return seg

    # ----- areas (main process) ----------------------------------------------------------

    def claim_area(self, generation: int = 0) -> int:
        """Claim a free area for a process about to be started; returns its number.

        ``generation`` is recorded for ``areas()`` (e.g. the hot-restart epoch). Raises
        ``StatsSegmentError`` when every area is claimed.
        """
        self._writable()
        with self._lock.exclusive():
            self._refresh_locked()
            return self._areas.claim(generation)

    def release_area(self, area: int) -> bool:
        """Fold the area of an exited process: counters and histograms into the retained
        totals, gauges dropped; the area is zeroed and freed. False if it was not claimed
        (so two main processes may both try)."""
        self._writable()
        self._check_area(area)
        with self._lock.exclusive():
            self._refresh_locked()
            return self._areas.release(area, self._index)

    def areas(self) -> list[AreaInfo]:
        """The claimed areas (for a new main process to find those of an old generation)."""
        return self._areas.claimed()

    def store(self, area: int) -> StatsStore:
        """A store writing ``area`` (claimed), for the process that owns it; records its pid."""
        self._writable()
        self._check_area(area)
        if not self._areas.is_claimed(area):
            raise ValueError(f"stats area {area} is not claimed")
        key = (os.getpid(), area)
        store = self._stores.get(key)
        if store is None:
            self._areas.set_pid(area, os.getpid())
            layout = self.layout
            views = AreaViews(self._q, self._i64, self._d, self._mv, layout.area_base(area + 1),
                              layout.off_used, layout.scalar_cap, layout.hist_cap)
            store = self._stores[key] = StatsStore(self, views, self._accept)
        return store

    # ----- names (NameSource for stores) ---------------------------------------------------

    def resolve(self, name: str, kind: Kind, unit: Unit) -> Entry | None:
        """The slot of ``name``, allocated if new (under the lock); None if a budget is full."""
        entry = self._index.by_name.get(name)
        if entry is None:
            with self._lock.exclusive():
                self._refresh_locked()
                entry = self._index.by_name.get(name)
                if entry is None:
                    entry = self._names.allocate(name, kind, unit)
                    if entry is not None:
                        self._index.add(entry)
        return entry

    def _refresh_locked(self) -> None:
        """Bring the name index up to date and finish any interrupted fold (lock held)."""
        self._names.read_into(self._index)
        if not self.read_only:
            self._areas.recover(self._index)

    # ----- reading -------------------------------------------------------------------------

    def snapshot(self, timeout: float = 10.0) -> Snapshot:
        """All stats summed over the retained area and the live areas, consistently.

        Retries while a fold or claim is in progress. If a fold was interrupted by a crash,
        a writable segment finishes it; a read-only one raises ``StatsSegmentError`` (the
        next writer finishes it). ``TimeoutError`` if the segment stays busy ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        if self._names.published() > len(self._index):
            with self._lock.shared(timeout):
                self._names.read_into(self._index)
        index, layout, q = self._index, self.layout, self._q
        n_scalars, n_hists = len(index.scalars), len(index.hists)
        while True:
            seq = q[H.SEQ]
            if seq & 1:
                self._wait_for_fold(deadline)
                continue
            bases = self._areas.claimed_bases()
            totals = sum_areas(q, self._d, bases, n_scalars, n_hists, layout.scalar_cap, layout.hist_cap)
            if q[H.SEQ] == seq:
                break
        used = used_names(index, self._mv, layout.scalar_cap, layout.off_used)
        return build_snapshot(index, totals, used)

    def _wait_for_fold(self, deadline: float) -> None:
        # A live folder holds the lock: waiting for a shared lock waits for it to finish.
        with self._lock.shared(max(deadline - time.monotonic(), 0.0)):
            interrupted = bool(self._q[H.SEQ] & 1)
        if not interrupted:
            return
        if self.read_only:
            raise StatsSegmentError(
                f"{self.path}: a fold was interrupted by a crash; the main process finishes it on its next "
                "claim, release or name allocation"
            )
        with self._lock.exclusive():
            self._refresh_locked()

    def usage(self) -> Usage:
        """How full the name budgets are (allocations so far, reserved stats included)."""
        q, layout = self._q, self.layout
        return Usage(int(q[H.N_SCALARS]), layout.scalar_cap, int(q[H.N_HISTS]), layout.hist_cap,
                     int(q[H.ARENA_USED]), layout.name_bytes, RESERVED_SCALARS, RESERVED_HISTOGRAMS)

    @property
    def sequence(self) -> int:
        """The seqlock value (odd while a fold or claim is in progress)."""
        return int(self._q[H.SEQ])

    # ----- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap (best effort: handles still held keep the mapping alive until collected)."""
        self._stores.clear()
        for view in (self._q, self._i64, self._d, self._mv):
            view.release()
        with contextlib.suppress(BufferError):
            self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._lock.close()

    def unlink(self) -> None:
        """Remove the segment and lock files (the last generation, at clean shutdown)."""
        for path in (self.path, self.path + ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"{self.path}: attached read-only")

    def _check_area(self, area: int) -> None:
        if not 0 <= area < self.layout.areas:
            raise ValueError(f"stats area {area} out of range 0..{self.layout.areas - 1}")


__all__ = ["DEFAULT_DIRECTORY", "Segment", "StatsLayoutError", "StatsSegmentError", "Usage", "segment_path"]
