"""Load balancers of workers/cluster.py: the host sequence each policy produces."""

from __future__ import annotations

import random
from collections import Counter

from filters.hashing import RingHash
from meshproxy.config.model import Cluster, Endpoint, LbPolicy, SocketAddress
from stats_shm import HeapStore
from workers.cluster import ClusterRuntime, LeastRequest, RoundRobin


def cluster(policy: LbPolicy, *weights: int) -> ClusterRuntime:
    endpoints = tuple(Endpoint(SocketAddress("127.0.0.1", 9000 + i), load_balancing_weight=w)
                      for i, w in enumerate(weights))
    config = Cluster(name="c", lb_policy=policy, endpoints=endpoints)
    return ClusterRuntime(config, HeapStore(), [(e.address.address, e.address.port_value,
                                                 e.load_balancing_weight, 0) for e in endpoints])


def ports(c: ClusterRuntime, n: int, key: int | None = None) -> list[int]:
    return [c.choose_host(key).port for _ in range(n)]  # type: ignore[union-attr]


def test_round_robin_rotates_over_every_host() -> None:
    picks = ports(cluster(LbPolicy.ROUND_ROBIN, 1, 1, 1), 9)
    assert Counter(picks) == {9000: 3, 9001: 3, 9002: 3}
    assert picks[:3] == picks[3:6]  # a fixed rotation


def test_weighted_round_robin_is_exact_and_smooth() -> None:
    picks = ports(cluster(LbPolicy.ROUND_ROBIN, 3, 1), 8)
    assert Counter(picks) == {9000: 6, 9001: 2}
    assert picks.count(9001) == 2 and picks[:4].count(9001) == 1  # spread out, not bunched


def test_random_reaches_every_host_in_proportion() -> None:
    random.seed(7)
    counts = Counter(ports(cluster(LbPolicy.RANDOM, 1, 3), 4000))
    assert 0.2 < counts[9000] / 4000 < 0.3


def test_least_request_prefers_the_host_with_fewer_active_requests() -> None:
    c = cluster(LbPolicy.LEAST_REQUEST, 1, 1)
    assert isinstance(c.lb, LeastRequest)
    busy, idle = c.hosts
    busy.rq_active = 50
    random.seed(1)
    picks = Counter(ports(c, 200))
    # With two choices, the busy host only wins when both draws land on it (~1/4).
    assert picks[idle.port] > 130


def test_ring_hash_places_a_key_where_envoys_ring_does() -> None:
    c = cluster(LbPolicy.RING_HASH, 1, 1, 1)
    ring = RingHash([(f"127.0.0.1:{9000 + i}", 1) for i in range(3)])
    for key in (1, 2**40, 2**63 + 5):
        assert c.choose_host(key).port == 9000 + ring.pick(key)  # type: ignore[union-attr]
    assert len(set(ports(c, 50, key=12345))) == 1  # same key, same host


def test_host_set_update_keeps_known_hosts_and_their_counters() -> None:
    c = cluster(LbPolicy.ROUND_ROBIN, 1, 1)
    first = c.hosts[0]
    first.rq_active = 3
    c.update_hosts([("127.0.0.1", 9000, 1, 0), ("127.0.0.1", 9005, 1, 0)])
    assert c.hosts[0] is first and c.hosts[0].rq_active == 3
    assert {h.port for h in c.hosts} == {9000, 9005}
    assert isinstance(c.lb, RoundRobin)


def test_lowest_priority_present_takes_all_traffic() -> None:
    c = cluster(LbPolicy.ROUND_ROBIN, 1)
    c.update_hosts([("127.0.0.1", 9000, 1, 1), ("127.0.0.1", 9001, 1, 0)])
    assert set(ports(c, 6)) == {9001}
