"""stats_shm segments in one process: files, layout checks, areas, budgets, crash recovery."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import stats_shm.layout
from stats_shm import (
    OVERFLOW,
    OVERFLOWED_COUNTERS,
    Segment,
    StatsLayoutError,
    StatsSegmentError,
    segment_path,
)


@pytest.fixture
def shm_dir() -> Iterator[str]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = tempfile.mkdtemp(prefix="meshproxy-test-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def small(shm_dir: str, base_id: int = 0, **kw: int) -> Segment:
    params = {"slot_budget": 256, "histogram_budget": 16, "areas": 4} | kw
    return Segment.create(base_id, directory=shm_dir, **params)


def test_files_and_reserved_stats(shm_dir: str) -> None:
    seg = small(shm_dir, 3)
    path = segment_path(3, shm_dir)
    assert seg.path == path and os.path.exists(path) and os.path.exists(path + ".lock")
    assert os.path.getsize(path) == seg.layout.total_bytes
    assert os.stat(path).st_mode & 0o777 == 0o640
    snap = seg.snapshot()
    assert snap.counters == {OVERFLOW: 0, OVERFLOWED_COUNTERS: 0}
    assert snap.gauges == {"stats.overflowed_gauges": 0}
    assert snap.histograms["stats.overflowed_histograms"].count == 0
    assert not snap.used
    seg.unlink()
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_create_chowns(shm_dir: str) -> None:
    seg = Segment.create(1, directory=shm_dir, slot_budget=8, histogram_budget=1, areas=1,
                         uid=65534, gid=65534, mode=0o600)
    for path in (seg.path, seg.path + ".lock"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)


def test_values_visible_through_attach(shm_dir: str) -> None:
    seg = small(shm_dir)
    area = seg.claim_area()
    store = seg.store(area)
    store.counter("cluster.a.upstream_rq_total").inc(3)
    store.gauge("server.live").set(1)
    store.histogram("cluster.a.upstream_rq_time").record(7.0)
    reader = Segment.attach(0, directory=shm_dir, read_only=True)
    snap = reader.snapshot()
    assert snap.counters["cluster.a.upstream_rq_total"] == 3
    assert snap.gauges["server.live"] == 1
    assert snap.histograms["cluster.a.upstream_rq_time"].count == 1
    assert snap.used == {"cluster.a.upstream_rq_total", "server.live", "cluster.a.upstream_rq_time"}
    with pytest.raises(PermissionError):
        reader.store(area)
    with pytest.raises(PermissionError):
        reader.claim_area()
    # A second writer attached to the same file shares the name table.
    other = Segment.attach(0, directory=shm_dir)
    other.store(other.claim_area()).counter("cluster.a.upstream_rq_total").inc(2)
    assert seg.snapshot().counters["cluster.a.upstream_rq_total"] == 5
    reader.close()
    other.close()


def test_release_folds_counters_and_histograms_drops_gauges(shm_dir: str) -> None:
    seg = small(shm_dir)
    a, b = seg.claim_area(), seg.claim_area()
    for area, n in ((a, 10), (b, 5)):
        store = seg.store(area)
        store.counter("c").inc(n)
        store.gauge("g").set(n)
        h = store.histogram("h")
        for _ in range(n):
            h.record(2.5)
    before = seg.snapshot()
    assert before.counters["c"] == 15 and before.gauges["g"] == 15
    assert seg.release_area(a) is True
    assert seg.release_area(a) is False  # already free: a second main process may try too
    after = seg.snapshot()
    assert after.counters["c"] == 15
    assert after.gauges["g"] == 5
    assert after.histograms["h"].count == 15 and after.histograms["h"].sum == 37.5
    assert "g" in after.used
    assert [info.area for info in seg.areas()] == [b]
    # The freed area is reused, starting from zero.
    again = seg.claim_area()
    assert again == a
    seg.store(again).counter("c").inc()
    assert seg.snapshot().counters["c"] == 16


def test_area_bookkeeping(shm_dir: str) -> None:
    seg = small(shm_dir, areas=2)
    a = seg.claim_area(generation=3)
    seg.claim_area()
    with pytest.raises(StatsSegmentError, match="all 2 stats areas are claimed"):
        seg.claim_area()
    seg.store(a)
    info = seg.areas()[0]
    assert (info.area, info.pid, info.generation) == (a, os.getpid(), 3)
    with pytest.raises(ValueError, match="out of range"):
        seg.release_area(2)
    seg.release_area(a)
    with pytest.raises(ValueError, match="not claimed"):
        seg.store(a)


def test_budget_overflow_in_segment(shm_dir: str) -> None:
    seg = Segment.create(0, directory=shm_dir, slot_budget=8, histogram_budget=1, areas=2)
    store = seg.store(seg.claim_area())
    for i in range(20):
        store.counter(f"c{i}").inc()
    snap = seg.snapshot()
    assert sorted(n for n in snap.counters if n.startswith("c")) == sorted(f"c{i}" for i in range(8))
    assert snap.counters[OVERFLOW] == 12 and snap.counters[OVERFLOWED_COUNTERS] == 12
    # Name bytes are a budget too.
    seg2 = Segment.create(1, directory=shm_dir, slot_budget=64, histogram_budget=1, areas=1, name_bytes=120)
    store2 = seg2.store(seg2.claim_area())
    store2.counter("x" * 100).inc()
    assert "x" * 100 not in seg2.snapshot().counters
    assert seg2.snapshot().counters[OVERFLOW] == 1


def test_segment_too_big_for_directory_is_refused(shm_dir: str) -> None:
    with pytest.raises(StatsSegmentError, match="MiB free"):
        Segment.create(0, directory=shm_dir, slot_budget=1 << 20, histogram_budget=1 << 20, areas=1024)
    assert os.listdir(shm_dir) == []


def test_stale_segment_is_replaced(shm_dir: str) -> None:
    old = small(shm_dir)
    old_store = old.store(old.claim_area())
    old_store.counter("c").inc(100)
    # A crashed run leaves its segment; epoch 0 creates a new one over it.
    new = small(shm_dir)
    assert "c" not in new.snapshot().counters
    assert new.areas() == []
    # The stale mapping is private to its holders and disturbs nothing.
    old_store.counter("c").inc()
    assert old.snapshot().counters["c"] == 101
    assert Segment.attach(0, directory=shm_dir).snapshot().counters.get("c") is None


def test_garbage_file_is_refused_then_replaced(shm_dir: str) -> None:
    path = Path(segment_path(0, shm_dir))
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StatsLayoutError, match="not a meshproxy stats segment"):
        Segment.attach(0, directory=shm_dir)
    path.write_bytes(b"short")
    with pytest.raises(StatsLayoutError, match="too small"):
        Segment.attach(0, directory=shm_dir)
    small(shm_dir)
    assert Segment.attach(0, directory=shm_dir).snapshot().counters[OVERFLOW] == 0


def test_layout_version_mismatch_is_refused(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    small(shm_dir)
    monkeypatch.setattr(stats_shm.layout, "LAYOUT_VERSION", 2)
    with pytest.raises(StatsLayoutError, match="layout version 1, this meshproxy reads version 2"):
        Segment.attach(0, directory=shm_dir)


def test_bucket_scheme_mismatch_is_refused(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    small(shm_dir)
    monkeypatch.setattr(stats_shm.layout, "SUB_BUCKETS", 8)
    with pytest.raises(StatsLayoutError, match="histogram buckets"):
        Segment.attach(0, directory=shm_dir, read_only=True)


def test_truncated_segment_is_refused(shm_dir: str) -> None:
    seg = small(shm_dir)
    os.truncate(seg.path, seg.layout.total_bytes - 4096)
    with pytest.raises(StatsLayoutError, match="header says"):
        Segment.attach(0, directory=shm_dir)


def test_missing_segment() -> None:
    with pytest.raises(FileNotFoundError):
        Segment.attach(12345, directory="/nonexistent-dir-for-test")


def _fill(seg: Segment, area: int, n_counters: int, n_hists: int) -> None:
    store = seg.store(area)
    rng = random.Random(area)
    for i in range(n_counters):
        store.counter(f"c{i}").inc(i + 1)
        store.gauge(f"g{i % 50}").inc()
    for i in range(n_hists):
        h = store.histogram(f"h{i}")
        for _ in range(60):
            h.record(rng.lognormvariate(0.0, 4.0))


@pytest.mark.slow
def test_fold_interrupted_by_sigkill_is_finished_exactly(shm_dir: str) -> None:
    """Kill the folding process at random points; the next lock holder finishes the fold
    and the totals are exactly what they were before it started."""
    seg = Segment.create(0, directory=shm_dir, slot_budget=4096, histogram_budget=512, areas=4)
    interrupted = 0
    for attempt in range(6):
        keep = seg.claim_area()
        victim = seg.claim_area()
        _fill(seg, keep, 100, 10)
        _fill(seg, victim, 2000, 400)
        expected = seg.snapshot()
        pid = os.fork()
        if pid == 0:  # a main process that dies while folding
            try:
                seg.release_area(victim)
            finally:
                os._exit(0)
        deadline = time.monotonic() + 10
        while not seg.sequence & 1 and time.monotonic() < deadline:
            pass
        time.sleep(random.Random(attempt).uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and seg.sequence & 1:
            interrupted += 1
        after = seg.snapshot()  # a writable reader finishes the fold
        assert not seg.sequence & 1
        assert after.counters == expected.counters
        assert after.histograms.keys() == expected.histograms.keys()
        for name, h in after.histograms.items():
            # Bucket counts are exact; the float sum may differ in the last bit (addition order).
            assert h.buckets == expected.histograms[name].buckets
            assert h.sum == pytest.approx(expected.histograms[name].sum, rel=1e-12)
        # The victim's gauges (40 each) are gone, the other area's stay.
        assert all(after.gauges[f"g{i}"] == expected.gauges[f"g{i}"] - 40 for i in range(50))
        assert [info.area for info in seg.areas()] == [keep]
        seg.release_area(keep)
    assert interrupted >= 3, "the kill rarely landed inside the fold; make the fold longer"
