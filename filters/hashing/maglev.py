"""MAGLEV consistent hashing, bit-exact with Envoy's ``MaglevLoadBalancer``.

Source matched: ``source/extensions/load_balancing_policies/maglev/maglev_lb.cc``
(``MaglevTable::constructMaglevTableInternal``, ``OriginalMaglevTable::
constructImplementationInternals``, ``chooseHost``, ``permutation``); known answers in
``tests/unit/test_hashing.py`` come from
``test/extensions/load_balancing_policies/maglev/maglev_lb_test.cc``. The algorithm is
pseudocode listing 1 of the Maglev paper (Eisenbud et al., NSDI 2016, section 3.4), weighted.

Building the table (once per host-set change), table size ``M`` prime (default 65537):

1. Hosts are sorted by key (the address string, see ``weights.host_key``), so the table does
   not depend on the order hosts are listed in.
2. Each host gets ``offset = XXH64(key, seed 0) % M`` and ``skip = XXH64(key, seed 1) % (M-1) + 1``;
   its preference list is ``(offset + skip * j) % M`` for ``j = 0, 1, ...``.
3. Rounds ``iteration = 1, 2, ...``: in sorted order, a host whose
   ``iteration * weight >= target`` (normalized weight, ``target`` starting at 0) takes the first
   free slot of its preference list and adds ``max_weight`` to its ``target``; so a host of the
   largest weight takes a slot every round, one of a third of it every third round. It stops as
   soon as all ``M`` slots are taken.

Choosing is ``table[hash % M]``; a retry ``attempt`` > 0 first flips the hash with
``hash ^= 2**64 - attempt``, as Envoy does. That is one list index: O(1).

Envoy runs round 3 as a loop over every host in every round, which is fine in C++ but
O(rounds * hosts) in Python; here each host is queued for the next round in which it is
eligible (found with the same float comparison), which visits hosts in the same order and so
fills the same table. Envoy's "compact" table variant only changes the memory layout.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Final

from filters.hashing.hash_functions import xx_hash64
from filters.hashing.weights import NormalizedHosts, normalize_host_weights, weight_bounds

#: ``MaglevLbConfig.table_size`` default: the paper's recommended size (section 5.3).
DEFAULT_TABLE_SIZE: Final = 65537
_MASK64: Final = 0xFFFFFFFFFFFFFFFF


def is_prime(n: int) -> bool:
    """Trial division, enough for table sizes (Envoy requires a prime ``table_size``)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


class Maglev:
    """An immutable Maglev lookup table over hosts ``0..n-1``; ``pick(hash)`` returns an index."""

    __slots__ = ("_table", "entries_per_host", "host_count", "table_size")

    def __init__(self, hosts: Sequence[tuple[str, int]], table_size: int = DEFAULT_TABLE_SIZE) -> None:
        """Build the table for ``hosts``: ``(key, load_balancing_weight)``, key as ``host_key``."""
        self._build(normalize_host_weights(hosts) if hosts else [], table_size)

    @classmethod
    def from_normalized(cls, normalized: NormalizedHosts, table_size: int = DEFAULT_TABLE_SIZE) -> Maglev:
        """Build from already-normalized weights (e.g. ``normalize_locality_weights``)."""
        table = cls.__new__(cls)
        table._build(normalized, table_size)
        return table

    def _build(self, normalized: NormalizedHosts, size: int) -> None:
        if not is_prime(size):
            raise ValueError("The table size of maglev must be prime number")  # Envoy's text
        self.table_size = size
        self.host_count = len(normalized)
        self.entries_per_host = [0] * len(normalized)
        self._table: list[int] = []
        if not normalized:
            return
        _, max_weight = weight_bounds(normalized)
        # Sort by key, keeping the caller's index for the answer (Envoy sorts (key, host, weight)).
        order = sorted(range(len(normalized)), key=lambda i: normalized[i][0])
        keys = [normalized[i][0].encode() for i in order]
        weights = [normalized[i][1] for i in order]
        slots = [xx_hash64(key) % size for key in keys]  # next preference, starts at offset
        skips = [xx_hash64(key, 1) % (size - 1) + 1 for key in keys]
        targets = [0.0] * len(order)
        counts = [0] * len(order)
        table = [-1] * size
        filled = 0
        # rounds[r]: sorted positions of the hosts eligible in round r. Round 1 takes everyone
        # (target 0 <= 1 * weight).
        rounds: dict[int, list[int]] = {1: list(range(len(order)))}
        iteration = 1
        while filled < size:
            batch = rounds.pop(iteration, None)
            if batch is None:
                iteration = min(rounds)
                continue
            batch.sort()
            for position in batch:
                if filled == size:
                    break
                target = targets[position] + max_weight
                targets[position] = target
                slot, skip = slots[position], skips[position]
                while table[slot] != -1:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = order[position]
                counts[position] += 1
                filled += 1
                slot += skip
                slots[position] = slot - size if slot >= size else slot
                rounds.setdefault(_next_round(iteration, weights[position], target), []).append(position)
            iteration += 1
        for position, count in enumerate(counts):
            self.entries_per_host[order[position]] = count
        self._table = table

    @property
    def min_entries_per_host(self) -> int:
        """Envoy's ``maglev_lb.min_entries_per_host`` gauge."""
        return min(self.entries_per_host, default=0)

    @property
    def max_entries_per_host(self) -> int:
        """Envoy's ``maglev_lb.max_entries_per_host`` gauge."""
        return max(self.entries_per_host, default=0)

    def table(self) -> array[int]:
        """A copy of the lookup table: slot -> host index (for tests and admin output)."""
        return array("i", self._table)

    def pick(self, key_hash: int, attempt: int = 0) -> int:
        """The host index for a 64-bit ``key_hash``; ``attempt`` > 0 flips the hash for retries.

        Raises ``LookupError`` on an empty table (Envoy returns no host: "no upstream host").
        """
        if attempt:
            key_hash ^= (-attempt) & _MASK64
        try:
            return self._table[key_hash % self.table_size]
        except IndexError:
            raise LookupError("maglev: no hosts") from None


def _next_round(iteration: int, weight: float, target: float) -> int:
    """The first round after ``iteration`` where Envoy's test ``round * weight >= target`` holds."""
    candidate = max(iteration + 1, math.ceil(target / weight) - 1)
    while candidate * weight < target:
        candidate += 1
    # The estimate may overshoot by a rounding step; step back while the test still holds.
    while candidate - 1 > iteration and (candidate - 1) * weight >= target:
        candidate -= 1
    return candidate
