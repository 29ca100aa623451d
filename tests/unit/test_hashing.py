"""Known answers for RING_HASH and MAGLEV: keys must land where Envoy puts them.

Expected values are copied from Envoy's own tests:
``test/common/common/hash_test.cc``,
``test/extensions/load_balancing_policies/ring_hash/ring_hash_lb_test.cc`` and
``test/extensions/load_balancing_policies/maglev/maglev_lb_test.cc`` (test names in comments).
Envoy's test hosts are ``tcp://127.0.0.1:<port>``, whose hash key is ``127.0.0.1:<port>``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from filters.hashing import (
    HashFunction,
    Maglev,
    RingHash,
    host_key,
    murmur_hash2_64,
    normalize_host_weights,
    normalize_locality_weights,
    xx_hash64,
)
from filters.hashing.maglev import is_prime
from filters.hashing.weights import weight_bounds

U64_MAX = 2**64 - 1


def hosts(*ports: int, weights: tuple[int, ...] = ()) -> list[tuple[str, int]]:
    return [(f"127.0.0.1:{port}", weights[i] if weights else 1) for i, port in enumerate(ports)]


# -- hash functions (hash_test.cc) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"foo", 3728699739546630719),
        (b"bar", 5234164152756840025),
        (b"foo\nbar", 8917841378505826757),
        (b"lyft", 4400747396090729504),
        (b"", 17241709254077376921),
    ],
)
def test_xx_hash64(data: bytes, expected: int) -> None:
    assert xx_hash64(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"foo", 9631199822919835226),
        (b"bar", 11474628671133349555),
        (b"foo\nbar", 16306510975912980159),
        (b"lyft", 12847078931730529320),
        (b"", 6142509188972423790),
    ],
)
def test_murmur_hash2_64(data: bytes, expected: int) -> None:
    assert murmur_hash2_64(data) == expected


def _murmur_reference(data: bytes, seed: int = 0xC70F6907) -> int:
    # A literal transcription of Envoy's hash.cc, byte loads and all.
    mul, mask = 0xC6A4A7935BD1E995, U64_MAX
    h = (seed ^ (len(data) * mul)) & mask
    aligned = len(data) & ~7
    for i in range(0, aligned, 8):
        word = sum(data[i + j] << (8 * j) for j in range(8))
        word = (word * mul) & mask
        word = ((word ^ (word >> 47)) * mul) & mask
        h = ((h ^ word) * mul) & mask
    if len(data) & 7:
        tail = 0
        for byte in reversed(data[aligned:]):
            tail = (tail << 8) + byte
        h = ((h ^ tail) * mul) & mask
    h = ((h ^ (h >> 47)) * mul) & mask
    return h ^ (h >> 47)


def test_murmur_hash2_64_matches_reference_on_all_lengths() -> None:
    rng = random.Random(7)
    for size in [*range(40), 511, 512, 513, 600]:  # whole words, tails, and the precompiled limit
        data = rng.randbytes(size)
        assert murmur_hash2_64(data) == _murmur_reference(data)
        assert murmur_hash2_64(data, 12345) == _murmur_reference(data, 12345)


def test_host_key_formats_like_envoy() -> None:
    assert host_key("127.0.0.1", 90) == "127.0.0.1:90"
    assert host_key("2001:DB8:0:0:0:0:0:1", 6379) == "[2001:db8::1]:6379"
    assert host_key("::ffff:1.2.3.4", 1) == "[::ffff:1.2.3.4]:1"
    with pytest.raises(OSError):
        host_key("not-an-ip", 1)


# -- RING_HASH (ring_hash_lb_test.cc) --------------------------------------------------------------


def test_ring_basic_xx_hash() -> None:  # Basic
    ring = RingHash(hosts(90, 91, 92, 93, 94, 95), minimum_ring_size=12)
    assert (ring.size, ring.min_hashes_per_host, ring.max_hashes_per_host) == (12, 2, 2)
    assert [(position, 90 + host) for position, host in ring.entries()] == [
        (833437586790550860, 94),
        (928266305478181108, 92),
        (1033482794131418490, 90),
        (3551244743356806947, 95),
        (3851675632748031481, 93),
        (5583722120771150861, 91),
        (6311230543546372928, 91),
        (7700377290971790572, 93),
        (13144177310400110813, 95),
        (13444792449719432967, 92),
        (15516499411664133160, 94),
        (16117243373044804889, 90),
    ]
    assert ring.pick(0) == 4
    assert ring.pick(U64_MAX) == 4
    assert ring.pick(3551244743356806947) == 5
    assert ring.pick(3551244743356806948) == 3
    assert ring.pick(16117243373044804880) == 0


def test_ring_basic_murmur2() -> None:  # BasicWithMurmur2
    ring = RingHash(hosts(80, 81, 82, 83, 84, 85), minimum_ring_size=12, hash_function="MURMUR_HASH_2")
    assert (ring.size, ring.min_hashes_per_host, ring.max_hashes_per_host) == (12, 2, 2)
    assert [(position, 80 + host) for position, host in ring.entries()] == [
        (1358027074129602068, 85),
        (4361834613929391114, 83),
        (7224494972555149682, 84),
        (7701421856454313576, 81),
        (8649315368077433379, 82),
        (8739448859063030639, 84),
        (9887544217113020895, 81),
        (10150910876324007731, 82),
        (15168472011420622455, 83),
        (15427156902705414897, 80),
        (16375050414328759093, 85),
        (17613279263364193813, 80),
    ]
    assert [ring.pick(h) for h in (0, U64_MAX, 1358027074129602068, 1358027074129602069)] == [5, 5, 5, 3]
    assert ring.pick(10150910876324007730) == 2


def test_ring_hostname_keys() -> None:  # BasicWithHostname: use_hostname_for_hashing
    ring = RingHash([(str(port), 1) for port in range(90, 96)], minimum_ring_size=12)
    assert [host for _, host in ring.entries()] == [5, 5, 3, 4, 3, 2, 0, 2, 1, 0, 1, 4]
    assert [ring.pick(h) for h in (0, U64_MAX, 7225015537174310577, 6803900775736438537)] == [5, 5, 2, 3]


def test_ring_retry_attempts_walk_the_ring() -> None:  # BasicWithRetryHostPredicate
    ring = RingHash(hosts(90, 91, 92, 93, 94, 95), minimum_ring_size=12)
    assert [ring.pick(0, attempt) for attempt in (0, 1, 2, 13)] == [4, 2, 0, 2]


def test_ring_uneven_hosts() -> None:  # UnevenHosts
    ring = RingHash(hosts(80, 81), minimum_ring_size=3)
    assert (ring.size, ring.min_hashes_per_host, ring.max_hashes_per_host) == (4, 2, 2)
    assert [p for p, _ in ring.entries()] == [
        5454692015285649509,
        7859399908942313493,
        13838424394637650569,
        16064866803292627174,
    ]
    assert ring.pick(0) == 0
    ring = RingHash(hosts(81, 82), minimum_ring_size=3)
    assert [(p, 81 + h) for p, h in ring.entries()] == [
        (7859399908942313493, 81),
        (8241336090459785962, 82),
        (12882406409176325258, 82),
        (16064866803292627174, 81),
    ]
    assert ring.pick(0) == 0


TINY_RING_EXPECTED = {  # HostWeightedTinyRing / LocalityWeightedTinyRing
    928266305478181108: 2,
    4443673547860492590: 2,
    5583722120771150861: 1,
    6311230543546372928: 1,
    13444792449719432967: 2,
    16117243373044804889: 0,
}


def test_ring_host_weighted_tiny_ring() -> None:  # HostWeightedTinyRing
    ring = RingHash(hosts(90, 91, 92, weights=(1, 2, 3)), minimum_ring_size=6, maximum_ring_size=6)
    assert (ring.size, ring.min_hashes_per_host, ring.max_hashes_per_host) == (6, 1, 3)
    assert {h: ring.pick(h) for h in TINY_RING_EXPECTED} == TINY_RING_EXPECTED


def _histogram(ring: RingHash, samples: int, host_count: int) -> list[int]:
    counts = [0] * host_count
    for i in range(samples):
        counts[ring.pick(i * (U64_MAX // samples))] += 1
    return counts


def test_ring_host_weighted_large_ring() -> None:  # HostWeightedLargeRing
    ring = RingHash(hosts(90, 91, 92, weights=(1, 2, 3)), minimum_ring_size=6144)
    assert (ring.size, ring.min_hashes_per_host, ring.max_hashes_per_host) == (6144, 1024, 3072)
    assert _histogram(ring, 6000, 3) == [987, 1932, 3081]


def test_ring_locality_weighted() -> None:  # LocalityWeightedTinyRing / LargeRing
    localities = [(1, hosts(90)), (2, hosts(91)), (3, hosts(92)), (0, hosts(93))]
    normalized = normalize_locality_weights(localities)
    assert [key for key, _ in normalized] == ["127.0.0.1:90", "127.0.0.1:91", "127.0.0.1:92"]
    tiny = RingHash.from_normalized(normalized, minimum_ring_size=6, maximum_ring_size=6)
    assert (tiny.size, tiny.min_hashes_per_host, tiny.max_hashes_per_host) == (6, 1, 3)
    assert {h: tiny.pick(h) for h in TINY_RING_EXPECTED} == TINY_RING_EXPECTED
    large = RingHash.from_normalized(normalized, minimum_ring_size=6144)
    assert (large.size, large.min_hashes_per_host, large.max_hashes_per_host) == (6144, 1024, 3072)
    assert _histogram(large, 6000, 3) == [987, 1932, 3081]  # and 0 for :93, which is absent


def test_ring_host_and_locality_weighted() -> None:  # HostAndLocalityWeighted{Tiny,Large}Ring
    localities = [(1, hosts(90, 91, weights=(1, 2))), (2, hosts(92, 93, weights=(1, 2)))]
    normalized = normalize_locality_weights(localities)
    tiny = RingHash.from_normalized(normalized, minimum_ring_size=9, maximum_ring_size=9)
    assert (tiny.size, tiny.min_hashes_per_host, tiny.max_hashes_per_host) == (9, 1, 4)
    expected = {
        928266305478181108: 2,
        3851675632748031481: 3,
        5583722120771150861: 1,
        6311230543546372928: 1,
        7700377290971790572: 3,
        12559126875973811811: 3,
        13444792449719432967: 2,
        13784988426630141778: 3,
        16117243373044804889: 0,
    }
    assert {h: tiny.pick(h) for h in expected} == expected
    large = RingHash.from_normalized(normalized, minimum_ring_size=9216)
    assert (large.size, large.min_hashes_per_host, large.max_hashes_per_host) == (9216, 1024, 4096)
    assert _histogram(large, 9000, 4) == [924, 2009, 2053, 4014]


def test_ring_small_fractional_scale() -> None:  # SmallFractionalScale
    ring = RingHash(hosts(90, 91, 92, 93), minimum_ring_size=2, maximum_ring_size=2)
    assert (ring.size, ring.min_hashes_per_host, ring.max_hashes_per_host) == (2, 0, 1)
    counts = _histogram(ring, 1024, 4)
    assert counts.count(0) == 2
    assert sum(counts) == 1024


def test_ring_large_fractional_scale() -> None:  # LargeFractionalScale
    ring = RingHash(hosts(90, 91), minimum_ring_size=1023, maximum_ring_size=1023)
    assert (ring.size, ring.min_hashes_per_host, ring.max_hashes_per_host) == (1023, 511, 512)
    assert _histogram(ring, 1023, 2) == [526, 497]


def test_ring_lopsided_weight_small_scale() -> None:  # LopsidedWeightSmallScale
    heavy = [("127.0.0.1:0", 1)]
    light = [(f"127.0.0.1:{i}", 1) for i in range(1, 1024)]
    ring = RingHash.from_normalized(
        normalize_locality_weights([(127, heavy), (1, light)]), minimum_ring_size=1024, maximum_ring_size=1024
    )
    assert (ring.size, ring.min_hashes_per_host, ring.max_hashes_per_host) == (1024, 0, 1016)
    expected = {
        11664790346325243808: 1,
        15894554872961148518: 128,
        13958138884277627155: 256,
        15803774069438192949: 384,
        3829253010855396576: 512,
        17918147347826565154: 640,
        6442769608292299103: 768,
        5881074926069334434: 896,
    }
    assert {h: ring.pick(h) for h in expected} == expected


def test_ring_bad_bounds_and_empty() -> None:  # BadRingSizeBounds, NoHost
    with pytest.raises(ValueError, match=r"^ring hash: minimum_ring_size \(20\) > maximum_ring_size \(10\)$"):
        RingHash(hosts(90), minimum_ring_size=20, maximum_ring_size=10)
    empty = RingHash([])
    assert len(empty) == 0
    with pytest.raises(LookupError):
        empty.pick(0)
    assert HashFunction("XX_HASH") is HashFunction.XX_HASH


def _ketama_choose(positions: list[int], h: int) -> int:
    # Envoy's Ring::chooseHost binary search, transcribed (signed indices and all).
    lowp, highp = 0, len(positions)
    while True:
        midp = (lowp + highp) // 2
        if midp == len(positions):
            return 0
        midval = positions[midp]
        midval1 = 0 if midp == 0 else positions[midp - 1]
        if midval1 < h <= midval:
            return midp
        if midval < h:
            lowp = midp + 1
        else:
            highp = midp - 1
        if lowp > highp:
            return 0


def test_ring_bisect_matches_envoys_ketama_search() -> None:
    rng = random.Random(11)
    for size in (1, 2, 3, 12, 100):
        positions = sorted(rng.getrandbits(64) for _ in range(size))
        probes = [0, 1, U64_MAX, *positions, *(p + 1 for p in positions), *(p - 1 for p in positions)]
        probes += [rng.getrandbits(64) for _ in range(200)]
        ring = RingHash([])
        ring._positions.extend(positions)
        ring._hosts.extend(range(size))
        for h in probes:
            if 0 <= h <= U64_MAX:
                assert ring.pick(h) == _ketama_choose(positions, h)


# -- MAGLEV (maglev_lb_test.cc) ---------------------------------------------------------------------


def test_maglev_basic() -> None:  # Basic, BasicStability
    table = Maglev(hosts(90, 91, 92, 93, 94, 95), table_size=7)
    assert list(table.table()) == [2, 4, 0, 1, 5, 0, 3]
    assert (table.min_entries_per_host, table.max_entries_per_host) == (1, 2)
    assert [table.pick(i) for i in range(21)] == [2, 4, 0, 1, 5, 0, 3] * 3
    # The table depends on the host keys, not on the order hosts are listed in.
    shuffled = hosts(90, 91, 92, 93, 94, 95)
    random.Random(3).shuffle(shuffled)
    again = Maglev(shuffled, table_size=7)
    assert [shuffled[again.pick(i)][0] for i in range(7)] == [
        f"127.0.0.1:{90 + h}" for h in (2, 4, 0, 1, 5, 0, 3)
    ]


def test_maglev_hostname_keys() -> None:  # BasicWithHostName
    table = Maglev([(str(port), 1) for port in range(90, 96)], table_size=7)
    assert [table.pick(i) for i in range(7)] == [2, 5, 0, 3, 4, 1, 0]


def test_maglev_single_host() -> None:  # SingleHost, WeightedSingleHost
    assert {Maglev(hosts(90), table_size=7).pick(i) for i in range(5)} == {0}
    assert {Maglev(hosts(90, weights=(7,)), table_size=17).pick(i) for i in range(17)} == {0}


def test_maglev_retry_attempts() -> None:  # BasicWithRetryHostPredicate
    table = Maglev(hosts(90, 91, 92, 93, 94, 95), table_size=7)
    assert [table.pick(10, attempt) for attempt in (0, 1, 2)] == [1, 0, 5]


def test_maglev_weighted() -> None:  # Weighted
    table = Maglev(hosts(90, 91, weights=(1, 2)), table_size=17)
    assert (table.min_entries_per_host, table.max_entries_per_host) == (6, 11)
    assert list(table.table()) == [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]


def test_maglev_locality_weighted() -> None:  # LocalityWeighted{Same,Different}LocalityWeights
    same = Maglev.from_normalized(
        normalize_locality_weights([(1, hosts(90, weights=(1,))), (1, hosts(91, weights=(2,)))]), 17
    )
    assert (same.min_entries_per_host, same.max_entries_per_host) == (8, 9)
    assert list(same.table()) == [1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1]
    # Localities A(:90, w1), B(:92, w3), C(:91, w2) weighted 8, 0, 2: :92 is left out.
    different = Maglev.from_normalized(
        normalize_locality_weights(
            [(8, hosts(90, weights=(1,))), (0, hosts(92, weights=(3,))), (2, hosts(91, weights=(2,)))]
        ),
        17,
    )
    assert (different.min_entries_per_host, different.max_entries_per_host) == (4, 13)
    assert list(different.table()) == [1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0]
    assert normalize_locality_weights([(0, hosts(90))]) == []  # LocalityWeightedAllZeroLocalityWeights


def test_maglev_locality_weighted_lopsided() -> None:  # LocalityWeightedLopsided
    heavy = [("127.0.0.1:0", 1)]
    light = [(f"127.0.0.1:{i}", 1) for i in range(1, 1024)]
    table = Maglev.from_normalized(normalize_locality_weights([(127, heavy), (1, light)]))
    assert (table.min_entries_per_host, table.max_entries_per_host) == (1, 65537 - 1023)
    counts = [0] * 1024
    for slot in table.table():
        counts[slot] += 1
    assert counts[0] == 65537 - 1023
    assert set(counts[1:]) == {1}


def test_maglev_rejects_non_prime_and_empty() -> None:  # NoPrimeNumber, NoHost
    with pytest.raises(ValueError, match=r"^The table size of maglev must be prime number$"):
        Maglev(hosts(90), table_size=8)
    assert [n for n in range(20) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]
    assert is_prime(65537)
    with pytest.raises(LookupError):
        Maglev([], table_size=7).pick(0)


@dataclass
class _Entry:  # Envoy's MaglevTable::TableBuildEntry
    host: int
    offset: int
    skip: int
    weight: float
    target: float = 0.0
    next: int = 0


def _maglev_reference(normalized: list[tuple[str, float]], size: int) -> list[int]:
    # Envoy's OriginalMaglevTable fill, transcribed: every host visited every round.
    _, max_weight = weight_bounds(normalized)
    order = sorted(range(len(normalized)), key=lambda i: normalized[i][0])
    entries = [
        _Entry(
            host=i,
            offset=xx_hash64(normalized[i][0].encode()) % size,
            skip=xx_hash64(normalized[i][0].encode(), 1) % (size - 1) + 1,
            weight=normalized[i][1],
        )
        for i in order
    ]
    table = [-1] * size
    filled, iteration = 0, 1
    while filled < size:
        for entry in entries:
            if filled == size:
                break
            if iteration * entry.weight < entry.target:
                continue
            entry.target += max_weight
            c = (entry.offset + entry.skip * entry.next) % size
            while table[c] != -1:
                entry.next += 1
                c = (entry.offset + entry.skip * entry.next) % size
            table[c] = entry.host
            entry.next += 1
            filled += 1
        iteration += 1
    return table


def test_maglev_fill_matches_envoys_loop_on_random_weights() -> None:
    rng = random.Random(5)
    for size in (7, 17, 101, 1009):
        for _ in range(8):
            count = rng.randint(1, 12)
            weighted = [
                (f"10.0.{rng.randint(0, 255)}.{i}:6379", rng.choice([1, 1, 2, 3, 7, 100]))
                for i in range(count)
            ]
            normalized = normalize_host_weights(weighted)
            assert list(Maglev.from_normalized(normalized, size).table()) == _maglev_reference(
                normalized, size
            )


# -- consistency and weights ---------------------------------------------------------------------

KEYS = [murmur_hash2_64(b"key:%d" % i) for i in range(20000)]


def test_ring_removing_a_host_moves_only_its_keys() -> None:
    # With the remaining hosts' weights unchanged, each keeps exactly its ring entries.
    full = [(f"10.0.0.{i}:6379", 0.1) for i in range(10)]
    before = RingHash.from_normalized(full)
    after = RingHash.from_normalized(full[:3] + full[4:])
    for h in KEYS:
        old = full[before.pick(h)][0]
        new = (full[:3] + full[4:])[after.pick(h)][0]
        if old != full[3][0]:
            assert new == old
    # As Envoy renormalizes (ring sizes change a little), other keys still mostly stay.
    ten = [(f"10.0.0.{i}:6379", 1) for i in range(10)]
    nine = ten[:3] + ten[4:]
    ring10, ring9 = RingHash(ten), RingHash(nine)
    kept = [h for h in KEYS if ten[ring10.pick(h)][0] != ten[3][0]]
    moved = sum(ten[ring10.pick(h)][0] != nine[ring9.pick(h)][0] for h in kept)
    assert moved / len(kept) < 0.15


def test_maglev_removing_a_host_moves_few_other_keys() -> None:
    ten = [(f"10.0.0.{i}:6379", 1) for i in range(10)]
    nine = ten[:3] + ten[4:]
    table10, table9 = Maglev(ten), Maglev(nine)
    kept = [h for h in KEYS if table10.pick(h) != 3]
    moved = sum(ten[table10.pick(h)][0] != nine[table9.pick(h)][0] for h in kept)
    assert moved / len(kept) < 0.05


def test_weights_are_respected() -> None:
    weighted = [("10.0.0.1:6379", 1), ("10.0.0.2:6379", 2), ("10.0.0.3:6379", 5)]
    for balancer in (RingHash(weighted), Maglev(weighted)):
        counts = [0, 0, 0]
        for h in KEYS:
            counts[balancer.pick(h)] += 1
        shares = [c / len(KEYS) for c in counts]
        assert shares == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.03)
    table = Maglev(weighted)
    assert table.entries_per_host[2] / table.entries_per_host[0] == pytest.approx(5, rel=0.01)
    with pytest.raises(ValueError, match="weight must be at least 1"):
        normalize_host_weights([("a", 0)])
