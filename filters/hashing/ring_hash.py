"""RING_HASH (ketama-style consistent hashing), bit-exact with Envoy's ``RingHashLoadBalancer``.

Source matched: ``source/extensions/load_balancing_policies/ring_hash/ring_hash_lb.cc``
(``Ring::Ring`` and ``Ring::chooseHost``); known answers in ``tests/unit/test_hashing.py`` come
from ``test/extensions/load_balancing_policies/ring_hash/ring_hash_lb_test.cc``.

Building the ring (once per host-set change):

1. Hosts arrive as ``(key, normalized weight)`` (see ``weights.py``); ``min_w`` is the smallest
   normalized weight, starting from 1.0.
2. ``scale = min(ceil(min_w * minimum_ring_size) / min_w, maximum_ring_size)``: enough entries that
   the lightest host gets a whole number of them, capped by the maximum. The ring has
   ``ceil(scale)`` entries.
3. Walking the hosts in order, ``target += scale * weight`` and the host gets entries
   ``"<key>_0"``, ``"<key>_1"``, ... while ``current < target`` (running sums of doubles, so
   fractional shares carry over to the next host). Each entry's position is
   ``XXH64(name, seed 0)`` or, with ``MURMUR_HASH_2``, ``murmurHash2(name, 0xc70f6907)``.
4. Entries are sorted by position.

Choosing (per request): the first entry whose position is ``>= hash``, wrapping to entry 0 past
the end. Envoy writes this as ketama's hand-rolled binary search; with distinct positions it is
exactly ``bisect_left`` (a test checks the two agree). A retry ``attempt`` > 0 moves
``attempt`` entries further round the ring, as Envoy does for retry host predicates.

The hash of a request is not computed here: the Redis proxy uses
``murmur_hash2_64(hashtag(key))`` (see ``filters.redis_proxy.commands.redis_key_hash``), other
callers their own. ``pick`` is one C ``bisect`` over a compact ``array('Q')``: O(log n).
"""

from __future__ import annotations

import enum
import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Final

from filters.hashing.hash_functions import murmur_hash2_64, xx_hash64
from filters.hashing.weights import NormalizedHosts, normalize_host_weights, weight_bounds

#: Envoy's defaults for ``RingHashLbConfig.minimum_ring_size`` / ``maximum_ring_size``.
DEFAULT_MIN_RING_SIZE: Final = 1024
DEFAULT_MAX_RING_SIZE: Final = 8 * 1024 * 1024


class HashFunction(enum.Enum):
    """``RingHashLbConfig.hash_function``: how ring entry positions are computed."""

    XX_HASH = "XX_HASH"
    MURMUR_HASH_2 = "MURMUR_HASH_2"


_ENTRY_HASH: Final[dict[HashFunction, Callable[[bytes], int]]] = {
    HashFunction.XX_HASH: xx_hash64,
    HashFunction.MURMUR_HASH_2: murmur_hash2_64,
}


class RingHash:
    """An immutable hash ring over hosts ``0..n-1``; ``pick(hash)`` returns a host index."""

    __slots__ = ("_hosts", "_positions", "hashes_per_host", "host_count", "size")

    def __init__(
        self,
        hosts: Sequence[tuple[str, int]],
        minimum_ring_size: int = DEFAULT_MIN_RING_SIZE,
        maximum_ring_size: int = DEFAULT_MAX_RING_SIZE,
        hash_function: HashFunction | str = HashFunction.XX_HASH,
    ) -> None:
        """Build the ring for ``hosts``: ``(key, load_balancing_weight)``, key as ``host_key``."""
        normalized = normalize_host_weights(hosts) if hosts else []
        self._build(normalized, minimum_ring_size, maximum_ring_size, HashFunction(hash_function))

    @classmethod
    def from_normalized(
        cls,
        normalized: NormalizedHosts,
        minimum_ring_size: int = DEFAULT_MIN_RING_SIZE,
        maximum_ring_size: int = DEFAULT_MAX_RING_SIZE,
        hash_function: HashFunction | str = HashFunction.XX_HASH,
    ) -> RingHash:
        """Build from already-normalized weights (e.g. ``normalize_locality_weights``)."""
        ring = cls.__new__(cls)
        ring._build(normalized, minimum_ring_size, maximum_ring_size, HashFunction(hash_function))
        return ring

    def _build(
        self, normalized: NormalizedHosts, min_size: int, max_size: int, function: HashFunction
    ) -> None:
        if min_size > max_size:
            # Envoy's exact message (RingHashLoadBalancer constructor).
            raise ValueError(f"ring hash: minimum_ring_size ({min_size}) > maximum_ring_size ({max_size})")
        self.host_count = len(normalized)
        self.hashes_per_host = [0] * len(normalized)
        self.size = 0
        self._positions = array("Q")
        self._hosts = array("I")
        if not normalized:
            return
        min_weight, _ = weight_bounds(normalized)
        scale = min(math.ceil(min_weight * min_size) / min_weight, float(max_size))
        self.size = math.ceil(scale)
        entry_hash = _ENTRY_HASH[function]
        entries: list[tuple[int, int]] = []
        append = entries.append
        current = 0.0
        target = 0.0
        for index, (key, weight) in enumerate(normalized):
            if not key:
                raise ValueError(f"host {index} has an empty hash key")
            prefix = key.encode() + b"_"
            target += scale * weight
            count = 0
            while current < target:
                append((entry_hash(prefix + str(count).encode()), index))
                count += 1
                current += 1.0
            self.hashes_per_host[index] = count
        entries.sort(key=_position)
        self._positions = array("Q", [position for position, _ in entries])
        self._hosts = array("I", [host for _, host in entries])

    @property
    def min_hashes_per_host(self) -> int:
        """Envoy's ``ring_hash_lb.min_hashes_per_host`` gauge (0 when a host got no entry)."""
        return min(self.hashes_per_host, default=0)

    @property
    def max_hashes_per_host(self) -> int:
        """Envoy's ``ring_hash_lb.max_hashes_per_host`` gauge."""
        return max(self.hashes_per_host, default=0)

    def __len__(self) -> int:
        return len(self._positions)

    def entries(self) -> list[tuple[int, int]]:
        """The ring as sorted ``(position, host index)`` pairs (for tests and admin output)."""
        return list(zip(self._positions, self._hosts, strict=True))

    def pick(self, key_hash: int, attempt: int = 0) -> int:
        """The host index for a 64-bit ``key_hash``; ``attempt`` > 0 walks on for retries.

        Raises ``LookupError`` on an empty ring (Envoy returns no host: "no upstream host").
        """
        positions = self._positions
        index = bisect_left(positions, key_hash)
        if index == len(positions):
            if not positions:
                raise LookupError("ring hash: no hosts")
            index = 0
        if attempt:
            index = (index + attempt) % len(positions)
        return self._hosts[index]


def _position(entry: tuple[int, int]) -> int:
    return entry[0]
