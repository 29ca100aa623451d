"""Byte layout of the stats segment, and the check that refuses to misread one.

The segment is one file in ``/dev/shm`` mapped ``MAP_SHARED`` by every process of one
meshproxy instance. Everything in it is an aligned 8-byte cell (u64, i64 or f64) except
the name bytes and the used flags, so a single-cell load or store is one machine access
and readers never see a torn value (x86-64 and aarch64 guarantee this for aligned
8-byte accesses; CPython's memoryview reads and writes one item with one ``memcpy`` of
8 bytes).

::

    offset 0        header: one page of u64 cells (``H`` below): magic, layout version,
                    sizes, offsets; then the mutable cells: seqlock, name counts, fold journal
    off_entries     name table: ``name_cap`` entries of 2 cells
                    (kind | unit<<8 | len<<16 | index<<32, arena offset)
    off_arena       name arena: the UTF-8 bytes of every name, appended
    off_used        used flags: one byte per scalar slot, then one per histogram slot
    off_area_table  area table: ``areas`` records of 4 cells (state, pid, generation, claim no)
    off_areas       area 0 is the *retained* area (totals folded from exited processes),
                    areas 1..N are the process areas; each area is page aligned and holds
                    scalar_cap cells     counters (u64) and gauges (i64), by slot index
                    hist_cap cells       histogram sums (f64), by histogram index
                    hist_cap*BUCKETS     histogram bucket counts (u64), by histogram index

The public area numbers handed out by ``Segment.claim_area`` are 0..N-1; area ``a``
lives at internal position ``a + 1``.

Invariants:
* The immutable header cells are written once, before the file is renamed into place,
  so an attaching process never sees a half-built header.
* ``LAYOUT_VERSION`` changes with any change of this file's layout or of the histogram
  bucket scheme; ``validate`` compares every size and offset, so a segment written by
  another layout raises ``StatsLayoutError`` instead of being misread.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from typing import Final

from stats_shm.histogram import BUCKETS, MAX_EXP, MIN_EXP, SUB_BUCKETS

MAGIC: Final = b"MPXSTAT\x00"
LAYOUT_VERSION: Final = 1
PAGE: Final = 4096
CELL: Final = 8
BYTE_ORDER_MARK: Final = 0x0102030405060708
NONE: Final = (1 << 64) - 1  # "no value" in a u64 cell (fold area, journal index)
EXP_BIAS: Final = 1024  # exponents are stored biased so they fit a u64 cell

ENTRY_CELLS: Final = 2
AREA_RECORD_CELLS: Final = 4
AREA_FREE: Final = 0
AREA_CLAIMED: Final = 1


class H(enum.IntEnum):
    """Cell indexes of the header (each cell is 8 bytes)."""

    MAGIC = 0
    VERSION = 1
    BYTE_ORDER = 2
    HEADER_BYTES = 3
    TOTAL_BYTES = 4
    SCALAR_CAP = 5
    HIST_CAP = 6
    AREAS = 7
    BUCKETS = 8
    SUB_BUCKETS = 9
    MIN_EXP = 10
    MAX_EXP = 11
    NAME_CAP = 12
    NAME_BYTES = 13
    AREA_BYTES = 14
    OFF_ENTRIES = 15
    OFF_ARENA = 16
    OFF_USED = 17
    OFF_AREA_TABLE = 18
    OFF_AREAS = 19
    BASE_ID = 20
    CREATED_NS = 21
    CREATOR_PID = 22
    # Mutable cells, written under the segment lock only.
    SEQ = 32  # seqlock: odd while the set of areas or the retained area is changing
    N_NAMES = 33  # published entries; bumped last when a name is allocated
    N_SCALARS = 34
    N_HISTS = 35
    ARENA_USED = 36
    FOLD_AREA = 37  # internal position of the area being folded, NONE when idle
    JOURNAL_INDEX = 38  # cell (relative to the area) whose new retained value is journaled
    JOURNAL_VALUE = 39  # raw 64 bits of that new retained value
    CLAIMS = 40  # claims ever made (a claim number per area record)


class AreaField(enum.IntEnum):
    """Cells of one area-table record."""

    STATE = 0
    PID = 1  # written by the process that opens a store on the area
    GENERATION = 2
    CLAIM_NO = 3


class StatsLayoutError(Exception):
    """The file is not a stats segment of this layout; attaching would misread it."""


class StatsSegmentError(Exception):
    """The segment cannot be created or used (space, areas exhausted, interrupted fold)."""


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class Layout:
    """Sizes and offsets of one segment, all derived from four budgets."""

    scalar_cap: int
    hist_cap: int
    areas: int
    name_bytes: int
    name_cap: int
    area_cells: int
    area_bytes: int
    off_entries: int
    off_arena: int
    off_used: int
    off_area_table: int
    off_areas: int
    total_bytes: int

    @classmethod
    def compute(cls, scalar_cap: int, hist_cap: int, areas: int, name_bytes: int) -> Layout:
        """Lay out a segment; the caps include the reserved slots."""
        if scalar_cap < 1 or hist_cap < 1 or areas < 1 or name_bytes < 1:
            raise ValueError("stats segment budgets must be positive")
        name_cap = scalar_cap + hist_cap
        off_entries = PAGE
        off_arena = _align(off_entries + name_cap * ENTRY_CELLS * CELL, CELL)
        off_used = _align(off_arena + name_bytes, CELL)
        off_area_table = _align(off_used + name_cap, CELL)
        off_areas = _align(off_area_table + areas * AREA_RECORD_CELLS * CELL, PAGE)
        area_cells = scalar_cap + hist_cap + hist_cap * BUCKETS
        area_bytes = _align(area_cells * CELL, PAGE)
        total = off_areas + (areas + 1) * area_bytes
        return cls(scalar_cap, hist_cap, areas, name_bytes, name_cap, area_cells, area_bytes,
                   off_entries, off_arena, off_used, off_area_table, off_areas, total)

    # ----- cell arithmetic (cell = index into a whole-file u64 view) -----------------------

    def area_base(self, position: int) -> int:
        """First cell of the area at internal ``position`` (0 = retained, a+1 = area a)."""
        return (self.off_areas + position * self.area_bytes) // CELL

    def area_record(self, area: int) -> int:
        """First cell of the area-table record of public area ``area``."""
        return self.off_area_table // CELL + area * AREA_RECORD_CELLS

    def entry_cell(self, n: int) -> int:
        return self.off_entries // CELL + n * ENTRY_CELLS

    # ----- header ---------------------------------------------------------------------------

    def write_header(self, hq: memoryview, base_id: int, created_ns: int, pid: int) -> None:
        """Fill the immutable header cells (``hq`` is a u64 view of the file)."""
        hq[H.MAGIC] = int.from_bytes(MAGIC, sys.byteorder)
        hq[H.VERSION] = LAYOUT_VERSION
        hq[H.BYTE_ORDER] = BYTE_ORDER_MARK
        hq[H.HEADER_BYTES] = PAGE
        hq[H.TOTAL_BYTES] = self.total_bytes
        hq[H.SCALAR_CAP] = self.scalar_cap
        hq[H.HIST_CAP] = self.hist_cap
        hq[H.AREAS] = self.areas
        hq[H.BUCKETS] = BUCKETS
        hq[H.SUB_BUCKETS] = SUB_BUCKETS
        hq[H.MIN_EXP] = MIN_EXP + EXP_BIAS
        hq[H.MAX_EXP] = MAX_EXP + EXP_BIAS
        hq[H.NAME_CAP] = self.name_cap
        hq[H.NAME_BYTES] = self.name_bytes
        hq[H.AREA_BYTES] = self.area_bytes
        hq[H.OFF_ENTRIES] = self.off_entries
        hq[H.OFF_ARENA] = self.off_arena
        hq[H.OFF_USED] = self.off_used
        hq[H.OFF_AREA_TABLE] = self.off_area_table
        hq[H.OFF_AREAS] = self.off_areas
        hq[H.BASE_ID] = base_id
        hq[H.CREATED_NS] = created_ns
        hq[H.CREATOR_PID] = pid
        hq[H.FOLD_AREA] = NONE
        hq[H.JOURNAL_INDEX] = NONE

    @classmethod
    def validate(cls, raw: bytes, file_size: int, path: str) -> Layout:
        """Check a header page read from ``path`` and return its layout, or raise.

        ``raw`` is at least the first page of the file. Every mismatch names what
        differs, so an operator can tell a foreign file from a segment written by an
        older or newer meshproxy.
        """
        if len(raw) < PAGE or file_size < PAGE:
            raise StatsLayoutError(f"{path}: {file_size} bytes is too small to be a meshproxy stats segment")
        if raw[:8] != MAGIC:
            raise StatsLayoutError(
                f"{path}: not a meshproxy stats segment (magic {raw[:8]!r}, expected {MAGIC!r})"
            )
        hq = memoryview(raw[:PAGE]).cast("Q")
        if hq[H.BYTE_ORDER] != BYTE_ORDER_MARK:
            raise StatsLayoutError(f"{path}: written with another byte order; refusing to attach")
        version = hq[H.VERSION]
        if version != LAYOUT_VERSION:
            raise StatsLayoutError(
                f"{path}: stats segment has layout version {version}, this meshproxy reads version "
                f"{LAYOUT_VERSION}; refusing to attach (start with a new segment: restart cold or "
                "use another base id)"
            )
        scheme = (hq[H.BUCKETS], hq[H.SUB_BUCKETS], hq[H.MIN_EXP] - EXP_BIAS, hq[H.MAX_EXP] - EXP_BIAS)
        if scheme != (BUCKETS, SUB_BUCKETS, MIN_EXP, MAX_EXP):
            raise StatsLayoutError(
                f"{path}: histogram buckets (count, per octave, min exp, max exp) are {scheme}, "
                f"this meshproxy uses {(BUCKETS, SUB_BUCKETS, MIN_EXP, MAX_EXP)}; refusing to attach"
            )
        try:
            layout = cls.compute(hq[H.SCALAR_CAP], hq[H.HIST_CAP], hq[H.AREAS], hq[H.NAME_BYTES])
        except ValueError as e:
            raise StatsLayoutError(f"{path}: corrupt stats segment header ({e})") from None
        stored = (hq[H.HEADER_BYTES], hq[H.TOTAL_BYTES], hq[H.NAME_CAP], hq[H.AREA_BYTES],
                  hq[H.OFF_ENTRIES], hq[H.OFF_ARENA], hq[H.OFF_USED], hq[H.OFF_AREA_TABLE], hq[H.OFF_AREAS])
        expected = (PAGE, layout.total_bytes, layout.name_cap, layout.area_bytes, layout.off_entries,
                    layout.off_arena, layout.off_used, layout.off_area_table, layout.off_areas)
        if stored != expected:
            raise StatsLayoutError(
                f"{path}: stats segment sizes/offsets {stored} do not match the layout its budgets imply "
                f"{expected}; refusing to attach"
            )
        if file_size != layout.total_bytes:
            raise StatsLayoutError(
                f"{path}: file is {file_size} bytes but its header says {layout.total_bytes}; "
                "refusing to attach"
            )
        return layout
