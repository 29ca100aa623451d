"""Micro-benchmark of stats_shm's hot path and its readers.

    python bench/bench_stats.py              # full run (about 1 minute)
    python bench/bench_stats.py --quick      # fewer repeats (about 10 s)

Prints ns per operation: the best of many short timeit repeats, so that on a busy
machine some repeats run without being preempted and the figure is the cost on an idle
core for handle calls on a real /dev/shm segment and on a HeapStore, and the
milliseconds of a snapshot and of a fold with a realistic number of stats. Targets:
counter ``inc()`` <= 150 ns, histogram ``record()`` <= 1 µs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stats_shm import HeapStore, Segment, StatsStore


def ns_per_op(stmt: str, env: dict[str, object], number: int, repeat: int) -> float:
    best = min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat))
    return best / number * 1e9


def handle_ops(store: StatsStore, number: int, repeat: int) -> dict[str, float]:
    c = store.counter("cluster.backend.upstream_cx_total")
    g = store.gauge("cluster.backend.upstream_cx_active")
    h = store.histogram("cluster.backend.upstream_cx_connect_ms")
    c.inc()
    g.inc()
    h.record(1.0)
    values = [random.lognormvariate(1.0, 1.5) for _ in range(1024)]
    env: dict[str, object] = {"c": c, "g": g, "h": h, "v": 3.7, "values": values}
    loop = ns_per_op("pass", env, number, repeat)  # timeit's own loop, for reference
    out = {
        "timeit loop (pass)": loop,
        "counter.inc()": ns_per_op("c.inc()", env, number, repeat),
        "counter.inc(1500)": ns_per_op("c.inc(1500)", env, number, repeat),
        "gauge.inc()": ns_per_op("g.inc()", env, number, repeat),
        "gauge.set(7)": ns_per_op("g.set(7)", env, number, repeat),
        "histogram.record(3.7)": ns_per_op("h.record(v)", env, number, repeat),
    }
    # Mixed values (different buckets, cache effects): 1024 records per statement.
    per = ns_per_op("for x in values: h.record(x)", env, 4, repeat) / 1024
    out["histogram.record(lognormal)"] = per
    return out


def reader_costs(directory: str, workers: int, counters: int, histograms: int) -> dict[str, float]:
    seg = Segment.create(1, directory=directory, slot_budget=16384, histogram_budget=1024, areas=64)
    names = [f"cluster.c{i}.upstream_rq_total" for i in range(counters)]
    hnames = [f"cluster.c{i}.upstream_rq_time" for i in range(histograms)]
    areas = [seg.claim_area() for _ in range(workers)]
    for area in areas:
        store = seg.store(area)
        for n in names:
            store.counter(n).inc(3)
        for n in hnames:
            h = store.histogram(n)
            for _ in range(200):
                h.record(random.lognormvariate(1.0, 1.5))
    t0 = time.perf_counter()
    snap = seg.snapshot()
    t1 = time.perf_counter()
    again = []
    for _ in range(5):
        t = time.perf_counter()
        seg.snapshot()
        again.append(time.perf_counter() - t)
    t2 = time.perf_counter()
    seg.release_area(areas[0])
    t3 = time.perf_counter()
    assert snap.counters[names[0]] == 3 * workers
    seg.close()
    return {
        f"snapshot ({workers} areas, {counters} counters, {histograms} histograms), first": (t1 - t0) * 1e3,
        "snapshot, again (best of 5)": min(again) * 1e3,
        f"release_area (fold {counters} counters, {histograms} histograms)": (t3 - t2) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    number, repeat = (20_000, 20) if args.quick else (20_000, 200)

    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    directory = tempfile.mkdtemp(prefix="meshproxy-bench-", dir=shm)
    try:
        seg = Segment.create(0, directory=directory, areas=4)
        shm = handle_ops(seg.store(seg.claim_area()), number, repeat)
        heap = handle_ops(HeapStore(), number, repeat)
        print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; best of {repeat} x {number} loops")
        print(f"{'operation':32s} {'shm ns/op':>10s} {'heap ns/op':>11s}")
        for key in shm:
            print(f"{key:32s} {shm[key]:10.0f} {heap[key]:11.0f}")
        print()
        for key, ms in reader_costs(directory, 8, 2000, 100).items():
            print(f"{key:70s} {ms:8.1f} ms")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
