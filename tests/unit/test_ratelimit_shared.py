"""The host-wide token bucket and connection count (filters/local_ratelimit/shared_bucket.py).

Bucket math against Envoy's fill-timer semantics with a fake clock; exactness across real
forked processes (the property the whole region exists for); crash recovery of
connection counts; slot keys and sharing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from filters.local_ratelimit import shared_bucket
from filters.local_ratelimit.shared_bucket import HostSharedRegion, SharedStateError, refill

S = 1_000_000_000  # ns


class FakeClock:
    def __init__(self, start: int = 10 * S) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(shared_bucket, "monotonic_ns", fake)
    return fake


@pytest.fixture
def region() -> Iterator[HostSharedRegion]:
    r = HostSharedRegion.create("test_limits", slots=8)
    yield r
    r.close()


# ----- the fill rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(("tokens", "elapsed", "expected_tokens", "expected_anchor"), [
    (0, 0, 0, 0),              # nothing due yet
    (0, S - 1, 0, 0),          # one ns short of a fill
    (0, S, 2, S),              # one fill of tokens_per_fill=2
    (0, 3 * S + 5, 6, 3 * S),  # three fills; the anchor keeps the phase
    (9, 5 * S, 10, 5 * S),     # capped at max_tokens
    (3, -S, 3, 0),             # a clock read before the anchor moved: nothing
])
def test_refill_is_envoys_fill_timer_applied_lazily(tokens: int, elapsed: int, expected_tokens: int,
                                                    expected_anchor: int) -> None:
    assert refill(tokens, 0, elapsed, 10, 2, S) == (expected_tokens, expected_anchor)


def test_bucket_starts_full_then_refills_per_interval(region: HostSharedRegion, clock: FakeClock) -> None:
    bucket = region.token_bucket("path:a", max_tokens=3, tokens_per_fill=2, fill_interval=1.0)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    clock.now += S // 2
    assert not bucket.try_take()
    clock.now += S // 2  # one interval since the start: +2
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]
    clock.now += 10 * S  # many intervals: capped at 3
    assert bucket.tokens() == 3


def test_fill_phase_does_not_drift(region: HostSharedRegion, clock: FakeClock) -> None:
    bucket = region.token_bucket("path:a", max_tokens=1, tokens_per_fill=1, fill_interval=1.0)
    assert bucket.try_take()
    for _ in range(5):  # taking late in each interval must not push the next fill later
        clock.now += S + S // 2
        assert bucket.try_take()
        clock.now -= S // 2
    assert not bucket.try_take()


def test_empty_bucket_refuses_without_taking_the_lock(region: HostSharedRegion, clock: FakeClock,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = region.token_bucket("path:a", max_tokens=1, tokens_per_fill=1, fill_interval=1.0)
    assert bucket.try_take()
    calls: list[int] = []
    monkeypatch.setattr(shared_bucket.fcntl, "flock", lambda fd, op: calls.append(op))
    assert not bucket.try_take()
    assert calls == []
    clock.now += S  # a fill is due: the locked path runs
    assert bucket.try_take()
    assert len(calls) == 2


def test_same_key_same_bucket_other_parameters_other_bucket(region: HostSharedRegion) -> None:
    a = region.token_bucket("share:k", 2, 1, 60.0)
    b = region.token_bucket("share:k", 2, 1, 60.0)
    c = region.token_bucket("share:k", 5, 1, 60.0)  # Envoy: share_key shares only an identical bucket
    assert a.try_take() and b.try_take()
    assert not a.try_take()
    assert c.tokens() == 5


def test_full_region_is_an_error(region: HostSharedRegion) -> None:
    for i in range(region.slots):
        region.token_bucket(f"path:{i}", 1, 1, 1.0)
    with pytest.raises(SharedStateError, match="slots are in use"):
        region.token_bucket("path:one-more", 1, 1, 1.0)


def test_adopt_maps_the_same_memory(region: HostSharedRegion) -> None:
    bucket = region.token_bucket("path:a", 5, 1, 60.0)
    bucket.try_take()
    other = HostSharedRegion.adopt(os.dup(region.fileno()))
    try:
        assert other.token_bucket("path:a", 5, 1, 60.0).tokens() == 4
    finally:
        other.close()


# ----- across processes -------------------------------------------------------------------------


def _in_children(n: int, work: Callable[[], int]) -> list[int]:
    """Run ``work()`` in ``n`` forked processes at once; their results.

    The children start together and exit together, after every one has finished: a child
    that exited early would be a dead holder, whose connections the others may reclaim.
    """
    results_r, results_w = os.pipe()
    go_r, go_w = os.pipe()
    exit_r, exit_w = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.read(go_r, 1)
                os.write(results_w, f"{work()}\n".encode())
                os.read(exit_r, 1)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.write(go_w, b"x" * n)
    lines = b""
    while lines.count(b"\n") < n:
        lines += os.read(results_r, 4096)
    os.write(exit_w, b"x" * n)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    for fd in (results_r, results_w, go_r, go_w, exit_r, exit_w):
        os.close(fd)
    return [int(line) for line in lines.split()]


def test_processes_share_one_bucket_exactly(region: HostSharedRegion) -> None:
    def work() -> int:
        bucket = region.token_bucket("path:shared", 1000, 1, 3600.0)  # each child binds its own handle
        return sum(bucket.try_take() for _ in range(700))

    taken = _in_children(4, work)
    assert sum(taken) == 1000  # 4 x 700 tries, 1000 tokens: never one more, never one less
    assert region.token_bucket("path:shared", 1000, 1, 3600.0).tokens() == 0


def test_processes_share_one_connection_count(region: HostSharedRegion) -> None:
    def work() -> int:
        counter = region.connection_counter("path:c")
        admitted = 0
        for _ in range(200):
            if counter.acquire(50):
                admitted += 1
            else:
                counter.release()  # a refused connection closes at once
        return admitted

    admitted = _in_children(4, work)
    assert sum(admitted) == 50  # nobody released an admitted one
    # The children exited holding them; claiming a holder here folds their shares out.
    assert region.connection_counter("path:c").total() == 0


def test_dead_process_share_is_reclaimed(region: HostSharedRegion, clock: FakeClock) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            counter = region.connection_counter("path:c")
            for _ in range(3):
                counter.acquire(10)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    mine = region.connection_counter("path:c")  # claiming reclaims dead holders at once
    assert mine.total() == 0
    pid = os.fork()
    if pid == 0:
        try:
            counter = region.connection_counter("path:c")
            for _ in range(4):
                counter.acquire(4)
            os.kill(os.getpid(), signal.SIGKILL)  # dies holding 4 connections
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    assert mine.total() == 4
    assert not mine.acquire(4)  # at the limit, and the last look for dead holders was just now
    mine.release()
    clock.now += shared_bucket.RECLAIM_INTERVAL_NS
    assert mine.acquire(4)  # the dead holder is folded out, then this one counts
    assert (mine.total(), mine.own()) == (1, 1)
