"""The two 64-bit hash functions Envoy's consistent-hashing load balancers use.

* ``xx_hash64`` is ``HashUtil::xxHash64`` (``source/common/common/hash.h``): XXH64 with seed 0
  unless told otherwise. RING_HASH uses it for ring entries by default (``hash_function:
  XX_HASH``) and MAGLEV for each host's offset (seed 0) and skip (seed 1). It comes from the
  ``xxhash`` package (the C library's own binding), so results are the reference values.
* ``murmur_hash2_64`` is ``MurmurHash::murmurHash2`` (``source/common/common/hash.cc``), a copy
  of libstdc++'s ``_Hash_bytes``, i.e. MurmurHash64A with ``STD_HASH_SEED`` (0xc70f6907). RING_HASH
  uses it with ``hash_function: MURMUR_HASH_2``, and the Redis proxy hashes every request key
  with it (``RedisLoadBalancerContextImpl``: ``murmurHash2(hashtag(key))``), so a key lands on the
  host Envoy would pick only if this function is bit-exact. It is pure Python (no maintained C
  binding of this exact variant exists on PyPI): about 1.5 us for a 3-byte key and 4 us for a
  17-byte one on the shared dev box, one ``struct`` unpack plus a few 64-bit multiplies per
  8-byte word (see ``tests/unit/test_hashing.py`` for Envoy's known answers).

All arithmetic is unsigned 64-bit, as in C++: every product is masked to 64 bits.
"""

from __future__ import annotations

import struct
from typing import Final

import xxhash

#: libstdc++'s seed for ``std::hash<std::string>``; Envoy's ``MurmurHash::STD_HASH_SEED``.
STD_HASH_SEED: Final = 0xC70F6907

_MUL: Final = 0xC6A4A7935BD1E995
_MASK64: Final = 0xFFFFFFFFFFFFFFFF

_xxh64_intdigest = xxhash.xxh64_intdigest

# Unpackers for keys of up to 64 words (512 bytes), built once; longer keys build their own.
_PRECOMPILED: Final = 64
_UNPACK_WORDS: Final = tuple(struct.Struct(f"<{i}Q").unpack_from for i in range(_PRECOMPILED))


def xx_hash64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` as an unsigned int: Envoy's ``HashUtil::xxHash64(data, seed)``."""
    return _xxh64_intdigest(data, seed)


def murmur_hash2_64(data: bytes, seed: int = STD_HASH_SEED) -> int:
    """Envoy's ``MurmurHash::murmurHash2(data, seed)`` (libstdc++ ``_Hash_bytes``, 64-bit)."""
    mul = _MUL
    mask = _MASK64
    n = len(data)
    h = (seed ^ (n * mul)) & mask
    nwords = n >> 3
    if nwords:
        # Whole 8-byte little-endian words: data = shift_mix(word * mul) * mul.
        unpack = _UNPACK_WORDS[nwords] if nwords < _PRECOMPILED else struct.Struct(f"<{nwords}Q").unpack_from
        for word in unpack(data):
            k = (word * mul) & mask
            k = ((k ^ (k >> 47)) * mul) & mask
            h = ((h ^ k) * mul) & mask
    if n & 7:
        # The 1..7 trailing bytes, loaded little-endian (load_bytes in hash.h).
        h = ((h ^ int.from_bytes(data[nwords << 3 :], "little")) * mul) & mask
    h = ((h ^ (h >> 47)) * mul) & mask
    return h ^ (h >> 47)
