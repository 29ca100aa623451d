"""Stat kinds and histogram units, as stored in the segment's name table.

The numeric values are part of the segment layout (``layout.LAYOUT_VERSION``): change
one and old segments must be refused.
"""

from __future__ import annotations

import enum


class Kind(enum.IntEnum):
    """What a stat name is; a name has one kind for the life of the segment."""

    COUNTER = 1  # u64, only goes up; summed over processes, kept when a process exits
    GAUGE = 2  # i64, up/down/set; summed over live processes, dropped when one exits
    HISTOGRAM = 3  # bucket counts + sum; merged over processes, kept when one exits


class Unit(enum.IntEnum):
    """A histogram's unit (Envoy's ``Histogram::Unit``); values are recorded in it.

    It only labels the data (statsd sends ``|ms`` or ``|h`` by it); buckets are the same
    for every unit.
    """

    UNSPECIFIED = 0
    BYTES = 1
    MICROSECONDS = 2
    MILLISECONDS = 3
    PERCENT = 4
