"""Consistent-hashing load balancers (RING_HASH, MAGLEV), bit-exact with Envoy.

Shared by every cluster with ``lb_policy: RING_HASH`` or ``MAGLEV``; no I/O, no asyncio. A
cluster builds one ``RingHash`` or ``Maglev`` per host-set change from its healthy hosts, then
calls ``pick(hash)`` per request to get a host index. Keys land on the host Envoy would choose
when the same host keys, weights, sizes and request hash are used:

* ``hash_functions``: ``xx_hash64`` and ``murmur_hash2_64`` (Envoy's ``HashUtil::xxHash64`` and
  ``MurmurHash::murmurHash2``).
* ``weights``: ``host_key`` (Envoy's address text) and weight normalization, with localities.
* ``ring_hash.RingHash`` and ``maglev.Maglev``.
"""

from __future__ import annotations

from filters.hashing.hash_functions import STD_HASH_SEED, murmur_hash2_64, xx_hash64
from filters.hashing.maglev import DEFAULT_TABLE_SIZE, Maglev
from filters.hashing.ring_hash import DEFAULT_MAX_RING_SIZE, DEFAULT_MIN_RING_SIZE, HashFunction, RingHash
from filters.hashing.weights import host_key, normalize_host_weights, normalize_locality_weights

__all__ = [
    "DEFAULT_MAX_RING_SIZE",
    "DEFAULT_MIN_RING_SIZE",
    "DEFAULT_TABLE_SIZE",
    "STD_HASH_SEED",
    "HashFunction",
    "Maglev",
    "RingHash",
    "host_key",
    "murmur_hash2_64",
    "normalize_host_weights",
    "normalize_locality_weights",
    "xx_hash64",
]
