"""Process areas: claim, release (fold into the retained area) and crash recovery.

Every writer of this module's cells holds the segment's exclusive lock, and the only
writers are main processes (one per hot-restart generation); a worker only writes its
own area's stats and its pid in its area record.

Reading: a counter is ``retained + sum(claimed areas)``. Readers take no lock; they use
the seqlock ``H.SEQ``:

    s1 = SEQ (retry while odd); read the area table and the cells; retry unless SEQ == s1

Claim (under the lock): ``SEQ`` odd, mark the lowest free area claimed with its
generation, ``SEQ`` even. A free area is all zeros, so a reader never sees stale values.

Release = fold (under the lock, after the area's process has exited)::

    FOLD_AREA = position; SEQ odd
    for each non-zero cell r of the area:
        counter / histogram sum / bucket:   new = retained[r] + area[r]
            JOURNAL_INDEX = NONE; JOURNAL_VALUE = new; JOURNAL_INDEX = r
            retained[r] = new; area[r] = 0
        gauge: area[r] = 0                  (dropped: the process is gone)
    JOURNAL_INDEX = NONE; area record = free; FOLD_AREA = NONE; SEQ even

A reader overlapping any of this sees ``SEQ`` odd or changed and retries, so it never
sees a value both in the area and in the retained total (double count) or in neither
(a counter going down).

Crash recovery: a folder killed mid-fold leaves ``FOLD_AREA`` set (and ``SEQ`` odd), and
its lock is released by the kernel. The next lock holder calls ``recover``: it re-applies
the journaled cell (``retained[r] = JOURNAL_VALUE; area[r] = 0``, an idempotent *set*,
never an add), then reruns the fold from the start: cells already folded are zero and
are skipped; the others were never touched. Writing ``JOURNAL_INDEX = NONE`` before the
value keeps a half-written journal from pairing an old index with a new value. A claim
killed between its two ``SEQ`` increments leaves ``SEQ`` odd with no fold: recovery makes
it even (that area stays claimed by nobody; ``areas()`` shows it with pid 0).
"""

from __future__ import annotations

from typing import NamedTuple

from stats_shm.histogram import BUCKETS
from stats_shm.kinds import Kind
from stats_shm.layout import (
    AREA_CLAIMED,
    AREA_FREE,
    AREA_RECORD_CELLS,
    NONE,
    AreaField,
    H,
    Layout,
    StatsSegmentError,
)
from stats_shm.names import NameIndex

_MASK64 = (1 << 64) - 1


class AreaInfo(NamedTuple):
    """A claimed area: its number, the pid that opened a store on it (0 if none yet),
    the generation given to ``claim_area`` and a claim number increasing per claim."""

    area: int
    pid: int
    generation: int
    claim_no: int


class AreaTable:
    """The area records and the fold protocol over one segment's views."""

    __slots__ = ("_d", "_layout", "_q")

    def __init__(self, layout: Layout, q: memoryview, d: memoryview[float]) -> None:
        self._layout = layout
        self._q = q
        self._d = d

    # ----- reading (no lock) ----------------------------------------------------------------

    def claimed(self) -> list[AreaInfo]:
        q, layout = self._q, self._layout
        out = []
        for area in range(layout.areas):
            rec = layout.area_record(area)
            if q[rec + AreaField.STATE] == AREA_CLAIMED:
                out.append(AreaInfo(area, q[rec + AreaField.PID], q[rec + AreaField.GENERATION],
                                    q[rec + AreaField.CLAIM_NO]))
        return out

    def claimed_bases(self) -> list[int]:
        """First cells of the retained area and every claimed area, for a reader."""
        q, layout = self._q, self._layout
        state = layout.area_record(0) + AreaField.STATE
        bases = [layout.area_base(0)]
        for area in range(layout.areas):
            if q[state + area * AREA_RECORD_CELLS] == AREA_CLAIMED:
                bases.append(layout.area_base(area + 1))
        return bases

    def is_claimed(self, area: int) -> bool:
        return bool(self._q[self._layout.area_record(area) + AreaField.STATE] == AREA_CLAIMED)

    def set_pid(self, area: int, pid: int) -> None:
        self._q[self._layout.area_record(area) + AreaField.PID] = pid

    # ----- writing (caller holds the exclusive lock and has called recover) -------------------

    def claim(self, generation: int) -> int:
        q, layout = self._q, self._layout
        for area in range(layout.areas):
            rec = layout.area_record(area)
            if q[rec + AreaField.STATE] == AREA_FREE:
                break
        else:
            raise StatsSegmentError(
                f"all {layout.areas} stats areas are claimed; create the segment with more areas "
                "(at least 2 x (workers + 1) to hot restart)"
            )
        q[H.SEQ] += 1
        q[H.CLAIMS] += 1
        q[rec + AreaField.PID] = 0
        q[rec + AreaField.GENERATION] = generation
        q[rec + AreaField.CLAIM_NO] = q[H.CLAIMS]
        q[rec + AreaField.STATE] = AREA_CLAIMED
        q[H.SEQ] += 1
        return area

    def release(self, area: int, index: NameIndex) -> bool:
        """Fold ``area`` into the retained area and free it; False if it was not claimed.

        ``index`` must be up to date (read under the same lock hold)."""
        if not self.is_claimed(area):
            return False
        q = self._q
        q[H.FOLD_AREA] = area + 1
        q[H.SEQ] += 1
        self._fold(area + 1, index)
        return True

    def recover(self, index: NameIndex) -> bool:
        """Finish a fold or claim interrupted by a crash; True if there was one."""
        q = self._q
        position = q[H.FOLD_AREA]
        if position != NONE:
            if not q[H.SEQ] & 1:
                q[H.SEQ] += 1
            journaled = q[H.JOURNAL_INDEX]
            if journaled != NONE:
                layout = self._layout
                q[layout.area_base(0) + journaled] = q[H.JOURNAL_VALUE]
                q[layout.area_base(position) + journaled] = 0
                q[H.JOURNAL_INDEX] = NONE
            self._fold(position, index)
            return True
        if q[H.SEQ] & 1:
            q[H.SEQ] += 1
            return True
        return False

    def _fold(self, position: int, index: NameIndex) -> None:
        q, d, layout = self._q, self._d, self._layout
        src, dst = layout.area_base(position), layout.area_base(0)
        n_scalars, n_hists = len(index.scalars), len(index.hists)
        gauge = [e.kind is Kind.GAUGE for e in index.scalars]
        sums = layout.scalar_cap
        buckets = sums + layout.hist_cap

        # Counters and gauges.
        for r, v in enumerate(q[src:src + n_scalars].tolist()):
            if v:
                if gauge[r]:
                    q[src + r] = 0
                else:
                    self._journaled_set(src, dst, r, (q[dst + r] + v) & _MASK64)
        # Histogram sums (f64; zero tested on the raw bits so -0.0 is cleared too).
        for k, raw in enumerate(q[src + sums:src + sums + n_hists].tolist()):
            if raw:
                r = sums + k
                q[H.JOURNAL_INDEX] = NONE
                d[H.JOURNAL_VALUE] = d[dst + r] + d[src + r]
                q[H.JOURNAL_INDEX] = r
                q[dst + r] = q[H.JOURNAL_VALUE]
                q[src + r] = 0
        # Histogram buckets.
        for k, v in enumerate(q[src + buckets:src + buckets + n_hists * BUCKETS].tolist()):
            if v:
                r = buckets + k
                self._journaled_set(src, dst, r, q[dst + r] + v)

        q[H.JOURNAL_INDEX] = NONE
        area = position - 1
        rec = layout.area_record(area)
        q[rec + AreaField.STATE] = AREA_FREE
        q[rec + AreaField.PID] = 0
        q[rec + AreaField.GENERATION] = 0
        q[rec + AreaField.CLAIM_NO] = 0
        q[H.FOLD_AREA] = NONE
        q[H.SEQ] += 1

    def _journaled_set(self, src: int, dst: int, r: int, new: int) -> None:
        """retained[r] = new; area[r] = 0 — restartable at any point (see the docstring)."""
        q = self._q
        q[H.JOURNAL_INDEX] = NONE
        q[H.JOURNAL_VALUE] = new
        q[H.JOURNAL_INDEX] = r
        q[dst + r] = new
        q[src + r] = 0
