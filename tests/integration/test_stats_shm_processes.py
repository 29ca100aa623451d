"""stats_shm across real processes: forked workers, kills, concurrent readers, a new main process.

No mocks: every writer is a forked process writing its own area of a segment in
/dev/shm; the test process plays the main process (claims areas before forking,
releases them after reaping), and a hot-restart "new main process" is a fresh
interpreter started with subprocess that attaches to the same segment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stats_shm import Segment

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shm_dir() -> Iterator[str]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = tempfile.mkdtemp(prefix="meshproxy-test-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fork(fn: Callable[[], object]) -> int:
    """Run ``fn`` in a forked child that exits 0 on success, 1 on an exception."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid: int, timeout: float = 60.0) -> int:
    """Wait for ``pid``; its exit code (negative signal number if killed)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"process {pid} did not exit in {timeout}s")
        time.sleep(0.005)


def test_workers_increment_concurrently_exact_totals(shm_dir: str) -> None:
    seg = Segment.create(0, directory=shm_dir, slot_budget=1024, histogram_budget=16, areas=8)
    n_workers, m = 4, 30_000

    def worker(area: int) -> None:
        store = seg.store(area)
        total = store.counter("cluster.backend.upstream_cx_total")
        per = store.counter(f"listener.worker_{area}.downstream_cx_total")
        active = store.gauge("cluster.backend.upstream_cx_active")
        hist = store.histogram("cluster.backend.upstream_cx_connect_ms")
        for i in range(m):
            total.inc()
            per.inc(2)
            active.inc()
            if i % 10 == 0:
                hist.record(0.5 + (i % 1000))
            active.dec()
        active.inc(7)  # still "connected" at exit

    areas = [seg.claim_area() for _ in range(n_workers)]
    pids = [fork(lambda a=a: worker(a)) for a in areas]  # type: ignore[misc]
    assert [reap(pid) for pid in pids] == [0] * n_workers
    live = seg.snapshot()
    assert live.counters["cluster.backend.upstream_cx_total"] == n_workers * m
    assert live.gauges["cluster.backend.upstream_cx_active"] == 7 * n_workers
    for area in areas:
        assert live.counters[f"listener.worker_{area}.downstream_cx_total"] == 2 * m
    hist = live.histograms["cluster.backend.upstream_cx_connect_ms"]
    assert hist.count == n_workers * m // 10
    assert hist.sum == n_workers * sum(0.5 + (i % 1000) for i in range(0, m, 10))
    for area in areas:
        seg.release_area(area)
    final = seg.snapshot()
    assert final.counters == live.counters
    assert final.histograms == live.histograms
    assert final.gauges["cluster.backend.upstream_cx_active"] == 0


def test_sigkilled_worker_counters_retained_exactly_gauges_dropped(shm_dir: str) -> None:
    seg = Segment.create(0, directory=shm_dir, slot_budget=64, histogram_budget=4, areas=4)
    area = seg.claim_area()
    survivor = seg.claim_area()
    seg.store(survivor).gauge("active").set(2)
    ready_r, ready_w = os.pipe()
    m = 12_345

    def worker() -> None:
        store = seg.store(area)
        exact = store.counter("exact")
        spin = store.counter("spin")
        hist = store.histogram("latency")
        for _ in range(m):
            exact.inc()
        for v in range(100):
            hist.record(float(v))
        store.gauge("active").set(5)
        os.write(ready_w, b"x")
        while True:  # killed in here, mid-increment
            spin.inc()

    pid = fork(worker)
    assert os.read(ready_r, 1) == b"x"
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    assert reap(pid) == -signal.SIGKILL
    frozen = seg.snapshot()
    assert frozen.counters["exact"] == m and frozen.counters["spin"] > 0
    assert frozen.gauges["active"] == 7
    assert seg.release_area(area)
    after = seg.snapshot()
    assert after.counters["exact"] == m
    assert after.counters["spin"] == frozen.counters["spin"]
    assert after.histograms["latency"] == frozen.histograms["latency"]
    assert after.gauges["active"] == 2
    assert [info.area for info in seg.areas()] == [survivor]


def _sampler(seg: Segment, stop_r: int, result_w: int, ceilings: dict[str, int]) -> None:
    """Reader process: snapshot continuously until ``stop_r`` is readable; report samples
    and every violation (a counter or histogram count going down or above its ceiling)."""
    os.set_blocking(stop_r, False)
    last: dict[str, int] = {}
    samples, violations = 0, []
    while True:
        try:
            if os.read(stop_r, 1):
                break
        except BlockingIOError:
            pass
        snap = seg.snapshot()
        values = dict(snap.counters)
        values.update({f"{n}#count": h.count for n, h in snap.histograms.items()})
        for name, ceiling in ceilings.items():
            v = values.get(name, 0)
            if v < last.get(name, 0) or v > ceiling:
                violations.append((name, last.get(name, 0), v))
            last[name] = v
        samples += 1
    os.write(result_w, json.dumps({"samples": samples, "violations": violations[:20]}).encode())


def _start_sampler(seg: Segment, ceilings: dict[str, int]) -> tuple[int, int, int]:
    stop_r, stop_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = fork(lambda: _sampler(seg, stop_r, result_w, ceilings))
    os.close(stop_r)
    os.close(result_w)
    return pid, stop_w, result_r


def _stop_sampler(pid: int, stop_w: int, result_r: int) -> dict[str, object]:
    os.write(stop_w, b"x")
    assert reap(pid) == 0
    with os.fdopen(result_r, "rb") as f:
        result: dict[str, object] = json.loads(f.read())
    return result


def test_reader_never_sees_counters_decrease_or_double_during_folds(shm_dir: str) -> None:
    seg = Segment.create(0, directory=shm_dir, slot_budget=512, histogram_budget=64, areas=8)
    waves, per_wave, m = 6, 2, 8_000
    total = waves * per_wave * m
    ceilings = {"c": total, "h0#count": total // 4, "h17#count": total // 4}
    sampler = _start_sampler(seg, ceilings)

    def worker(area: int, seed: int) -> None:
        store = seg.store(area)
        c = store.counter("c")
        hists = [store.histogram(f"h{i}") for i in range(40)]
        g = store.gauge("g")
        rng = random.Random(seed)
        for i in range(m):
            c.inc()
            g.inc()
            if i % 4 == 0:
                for h in (hists[0], hists[17]):
                    h.record(rng.lognormvariate(0, 3))
                hists[20 + (i // 4) % 20].record(1.0)  # spread over more histograms: longer folds

    seed = 0
    for _ in range(waves):
        areas = [seg.claim_area() for _ in range(per_wave)]
        pids = []
        for area in areas:
            seed += 1
            pids.append(fork(lambda a=area, s=seed: worker(a, s)))  # type: ignore[misc]
        for pid, area in zip(pids, areas, strict=True):
            assert reap(pid) == 0
            seg.release_area(area)  # fold while the sampler reads
    result = _stop_sampler(*sampler)
    final = seg.snapshot()
    assert final.counters["c"] == total
    assert final.histograms["h0"].count == final.histograms["h17"].count == total // 4
    assert final.gauges["g"] == 0
    assert result["violations"] == []
    assert isinstance(result["samples"], int) and result["samples"] >= 10


def test_names_created_concurrently_get_unique_slots(shm_dir: str) -> None:
    seg = Segment.create(0, directory=shm_dir, slot_budget=4096, histogram_budget=64, areas=8)
    shared = [f"redis.r.command.cmd{i}.total" for i in range(300)]
    n_procs = 4

    def worker(area: int) -> None:
        store = seg.store(area)
        names = shared[:]
        random.Random(area).shuffle(names)
        for i, name in enumerate(names):
            store.counter(name).inc(area + 1)
            if i % 10 == 0:
                store.counter(f"own.{area}.{i}").inc()
        store.histogram(f"redis.r.command.cmd{area}.latency").record(1.0)

    areas = [seg.claim_area() for _ in range(n_procs)]
    pids = [fork(lambda a=a: worker(a)) for a in areas]  # type: ignore[misc]
    assert [reap(pid) for pid in pids] == [0] * n_procs
    fresh = Segment.attach(0, directory=shm_dir, read_only=True)
    usage = fresh.usage()
    snap = fresh.snapshot()
    own = [n for n in snap.counters if n.startswith("own.")]
    assert len(own) == n_procs * 30
    # Every slot holds a distinct name: no duplicate, no lost name.
    assert usage.scalars == usage.reserved_scalars + len(shared) + len(own)
    assert usage.histograms == usage.reserved_histograms + n_procs
    expected = sum(a + 1 for a in areas)
    assert all(snap.counters[name] == expected for name in shared)


NEW_MAIN = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[2])
    from stats_shm import Segment

    seg = Segment.attach(0, directory=sys.argv[1])
    mine = seg.claim_area(generation=1)
    store = seg.store(mine)
    store.gauge("server.hot_restart_epoch").set(1)
    store.counter("server.main_loops").inc(10)
    m = int(sys.argv[3])
    for _ in range(2):                             # generation-1 workers
        area = seg.claim_area(generation=1)
        pid = os.fork()
        if pid == 0:
            s = seg.store(area)
            c = s.counter("listener.x.downstream_cx_total")
            for _ in range(m):
                c.inc()
            s.gauge("listener.x.downstream_cx_active").set(1)
            os._exit(0)
        os.waitpid(pid, 0)
        seg.release_area(area)
    print("started", flush=True)
    assert sys.stdin.readline().strip() == "old-generation-exited"
    for info in seg.areas():                        # whatever the old main did not release
        if info.generation == 0:
            seg.release_area(info.area)
    print(json.dumps(seg.snapshot().counters), flush=True)
    seg.release_area(mine)
    """
)


def test_hot_restart_new_main_process_keeps_counters_continuous(shm_dir: str) -> None:
    m = 10_000
    seg = Segment.create(0, directory=shm_dir, slot_budget=256, histogram_budget=8, areas=16)
    main_area = seg.claim_area(generation=0)  # this test process is the old main process
    main_store = seg.store(main_area)
    main_store.counter("server.main_loops").inc(5)
    main_store.gauge("server.hot_restart_epoch").set(0)
    ceilings = {"listener.x.downstream_cx_total": 4 * m, "server.main_loops": 15}
    sampler = _start_sampler(seg, ceilings)

    go_r, go_w = os.pipe()
    old_areas = [seg.claim_area(generation=0) for _ in range(2)]

    def old_worker(area: int) -> None:
        s = seg.store(area)
        c = s.counter("listener.x.downstream_cx_total")
        for _ in range(m):
            c.inc()
        s.gauge("listener.x.downstream_cx_active").set(1)
        os.read(go_r, 1)  # drain until told to exit

    old_pids = [fork(lambda a=a: old_worker(a)) for a in old_areas]  # type: ignore[misc]
    new_main = subprocess.Popen(
        [sys.executable, "-c", NEW_MAIN, shm_dir, str(REPO), str(m)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert new_main.stdin is not None and new_main.stdout is not None
    try:
        assert new_main.stdout.readline().strip() == "started"
        both = seg.snapshot()
        # Both generations' gauges count while the old one drains.
        assert both.gauges["listener.x.downstream_cx_active"] == 2
        assert both.gauges["server.hot_restart_epoch"] == 1
        assert both.counters["listener.x.downstream_cx_total"] == 4 * m
        # The old generation exits; the old main releases one worker and dies.
        os.write(go_w, b"xx")
        assert [reap(pid) for pid in old_pids] == [0, 0]
        seg.release_area(old_areas[0])
        new_main.stdin.write("old-generation-exited\n")
        new_main.stdin.flush()
        counters = json.loads(new_main.stdout.readline())
        assert new_main.wait(timeout=30) == 0
    finally:
        if new_main.poll() is None:
            new_main.kill()
            new_main.wait()
    assert counters["listener.x.downstream_cx_total"] == 4 * m
    assert counters["server.main_loops"] == 15
    result = _stop_sampler(*sampler)
    assert result["violations"] == []
    final = seg.snapshot()
    assert final.counters["listener.x.downstream_cx_total"] == 4 * m
    assert final.gauges["listener.x.downstream_cx_active"] == 0
    assert final.gauges["server.hot_restart_epoch"] == 0
    assert seg.areas() == []
