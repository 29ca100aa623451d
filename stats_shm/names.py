"""The name table: which slot each stat name owns, shared by every process.

Names are allocated at run time by any process (a worker creates per-command stats when
it first sees a command). Allocation takes the segment's exclusive lock (never on the hot
path: only when a store is asked for a name it has not resolved before) and appends:

1. the name's UTF-8 bytes to the arena (``ARENA_USED`` grows),
2. the entry (kind, unit, length, slot index; arena offset) at position ``N_NAMES``,
3. ``N_SCALARS`` or ``N_HISTS`` (the slot index just handed out),
4. ``N_NAMES`` last: that is the publication point.

Entries are never removed or changed, so a process keeps a local ``NameIndex``
(name -> entry, and slot -> name for readers) and only reads the entries past the count
it has already seen. The first slots are reserved (``RESERVED``):

* ``stats.overflow`` (C): names refused because a budget (counter/gauge slots,
  histogram slots or name bytes) was full; each store counts each refused name once.
* ``stats.overflowed_counters`` (C), ``stats.overflowed_gauges`` (G),
  ``stats.overflowed_histograms`` (H): the shared stats that refused names write to,
  so their events are still visible in aggregate.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from stats_shm.kinds import Kind, Unit
from stats_shm.layout import H, Layout

OVERFLOW: Final = "stats.overflow"
OVERFLOWED_COUNTERS: Final = "stats.overflowed_counters"
OVERFLOWED_GAUGES: Final = "stats.overflowed_gauges"
OVERFLOWED_HISTOGRAMS: Final = "stats.overflowed_histograms"
RESERVED: Final = (
    (OVERFLOW, Kind.COUNTER, Unit.UNSPECIFIED),
    (OVERFLOWED_COUNTERS, Kind.COUNTER, Unit.UNSPECIFIED),
    (OVERFLOWED_GAUGES, Kind.GAUGE, Unit.UNSPECIFIED),
    (OVERFLOWED_HISTOGRAMS, Kind.HISTOGRAM, Unit.UNSPECIFIED),
)
RESERVED_SCALARS: Final = 3
RESERVED_HISTOGRAMS: Final = 1
MAX_NAME_BYTES: Final = 0xFFFF


class Entry(NamedTuple):
    """One allocated name: its kind, its slot (scalar or histogram index) and unit."""

    name: str
    kind: Kind
    slot: int
    unit: Unit


class NameIndex:
    """A process-local view of the names: by name for stores, by slot for readers."""

    __slots__ = ("by_name", "hists", "scalars")

    def __init__(self) -> None:
        self.by_name: dict[str, Entry] = {}
        self.scalars: list[Entry] = []  # by scalar slot
        self.hists: list[Entry] = []  # by histogram slot

    def __len__(self) -> int:
        return len(self.by_name)

    def add(self, entry: Entry) -> None:
        self.by_name[entry.name] = entry
        slots = self.hists if entry.kind is Kind.HISTOGRAM else self.scalars
        if entry.slot != len(slots):  # entries are published in slot order per kind
            raise AssertionError(f"name table out of order at {entry}")
        slots.append(entry)


class LocalNames:
    """Allocation for a ``HeapStore``: the same budgets, in process memory."""

    __slots__ = ("_hist_cap", "_scalar_cap", "index")

    def __init__(self, scalar_cap: int, hist_cap: int) -> None:
        self.index = NameIndex()
        self._scalar_cap = scalar_cap
        self._hist_cap = hist_cap
        for name, kind, unit in RESERVED:
            entry = self.allocate(name, kind, unit)
            assert entry is not None

    def resolve(self, name: str, kind: Kind, unit: Unit) -> Entry | None:
        """The entry of ``name``, allocated if new; None when a budget is full."""
        entry = self.index.by_name.get(name)
        return entry if entry is not None else self.allocate(name, kind, unit)

    def allocate(self, name: str, kind: Kind, unit: Unit) -> Entry | None:
        index = self.index
        if kind is Kind.HISTOGRAM:
            slot, cap = len(index.hists), self._hist_cap
        else:
            slot, cap = len(index.scalars), self._scalar_cap
        if slot >= cap or len(name.encode()) > MAX_NAME_BYTES:
            return None
        entry = Entry(name, kind, slot, unit)
        index.add(entry)
        return entry


class SharedNames:
    """The name table inside the segment (see the module docstring for the protocol)."""

    __slots__ = ("_layout", "_mv", "_q")

    def __init__(self, layout: Layout, mv: memoryview, q: memoryview) -> None:
        self._layout = layout
        self._mv = mv  # bytes of the whole file
        self._q = q  # u64 cells of the whole file

    def published(self) -> int:
        """Entries published so far (a plain read; safe without the lock)."""
        return int(self._q[H.N_NAMES])

    def read_into(self, index: NameIndex) -> None:
        """Append to ``index`` the entries it has not seen yet.

        Call under the segment lock (shared is enough) so that every published entry is
        complete on any CPU memory model.
        """
        q, mv, layout = self._q, self._mv, self._layout
        arena = layout.off_arena
        for n in range(len(index), q[H.N_NAMES]):
            cell = layout.entry_cell(n)
            word, offset = q[cell], q[cell + 1]
            kind = Kind(word & 0xFF)
            unit = Unit((word >> 8) & 0xFF)
            length = (word >> 16) & 0xFFFF
            slot = word >> 32
            name = bytes(mv[arena + offset:arena + offset + length]).decode()
            index.add(Entry(name, kind, slot, unit))

    def allocate(self, name: str, kind: Kind, unit: Unit) -> Entry | None:
        """Append a new name; None when a budget is full. Call under the exclusive lock,
        after ``read_into`` has brought the caller's index up to date."""
        q, layout = self._q, self._layout
        raw = name.encode()
        n = q[H.N_NAMES]
        used = q[H.ARENA_USED]
        if len(raw) > MAX_NAME_BYTES or used + len(raw) > layout.name_bytes or n >= layout.name_cap:
            return None
        if kind is Kind.HISTOGRAM:
            count_cell, cap = H.N_HISTS, layout.hist_cap
        else:
            count_cell, cap = H.N_SCALARS, layout.scalar_cap
        slot = q[count_cell]
        if slot >= cap:
            return None
        start = layout.off_arena + used
        self._mv[start:start + len(raw)] = raw
        q[H.ARENA_USED] = used + len(raw)
        cell = layout.entry_cell(n)
        q[cell + 1] = used
        q[cell] = int(kind) | (int(unit) << 8) | (len(raw) << 16) | (slot << 32)
        q[count_cell] = slot + 1
        q[H.N_NAMES] = n + 1
        return Entry(name, kind, slot, unit)


def used_names(index: NameIndex, used: memoryview, scalar_cap: int, offset: int = 0) -> frozenset[str]:
    """Names whose used byte is set (``used`` is a byte view; scalars first, then histograms)."""
    names = [e.name for e in index.scalars if used[offset + e.slot]]
    base = offset + scalar_cap
    names.extend(e.name for e in index.hists if used[base + e.slot])
    return frozenset(names)

