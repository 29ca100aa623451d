#!/usr/bin/env python3
"""Sample meshproxy worker processes with py-spy and say where their time goes.

``sample_workers`` runs one ``py-spy record --nonblocking -f raw`` per worker while a load
function runs, and measures the workers' user and system CPU from /proc over the same
time. ``summarise`` reads py-spy's raw (collapsed) stacks and ranks functions by own time.

Reading the result: py-spy runs without ``--native``, so time spent in C is charged to the
nearest Python frame. Stacks are cut at the worker's call into the event loop
(``LOOP_ENTRY``): that frame's own time is uvloop itself (epoll, ``recv``, dispatching the
protocol callbacks), and a transport ``write`` method's own time is mostly its ``send()``
system call. Idle samples (blocked in epoll_wait) are left out by py-spy.

Standalone, to re-read stacks kept in bench/out/::

    python bench/worker_profile.py bench/out/profile-P1-*.txt
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LOOP_ENTRY: Final = "worker.py:run"
LOOP_LABEL: Final = "(uvloop in C: epoll, recv, dispatch)"
SAMPLE_RATE: Final = 200  # per second; py-spy's default of 100 gives few samples in 10 s


@dataclass(frozen=True, slots=True)
class CpuUse:
    """The workers' CPU over a sampled run, as fractions of one core, summed over workers."""

    user: float
    system: float


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far; zeros if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def ensure_py_spy() -> None:
    if shutil.which("py-spy") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True, timeout=600)


def sample_workers(pids: list[int], outputs: list[Path], duration: int,
                   load: Callable[[float], None]) -> CpuUse:
    """Record each of ``pids`` into ``outputs`` for ``duration`` s while ``load(seconds)`` runs."""
    for out in outputs:
        out.unlink(missing_ok=True)
    spies = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(duration),
                               "-r", str(SAMPLE_RATE), "--nonblocking", "-f", "raw", "-o", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid, out in zip(pids, outputs, strict=True)]
    try:
        time.sleep(0.5)  # py-spy attaches
        before = [cpu_times(pid) for pid in pids]
        started = time.monotonic()
        load(duration - 1)
        elapsed = time.monotonic() - started
        after = [cpu_times(pid) for pid in pids]
        for spy in spies:
            spy.wait(timeout=duration + 30)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
    user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    return CpuUse(user / elapsed, system / elapsed)


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``file.py:func`` (lines folded together)."""
    func, _, where = frame.partition(" (")
    return f"{Path(where.rsplit(':', 1)[0]).name}:{func}" if where else func


def read_stacks(paths: list[Path]) -> Counter[tuple[str, ...]]:
    """py-spy raw stacks, cut below ``LOOP_ENTRY``, with their sample counts."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = [frame_name(f) for f in stack.split(";") if " (" in f]
            if LOOP_ENTRY in frames:
                frames = [LOOP_LABEL, *frames[len(frames) - frames[::-1].index(LOOP_ENTRY):]]
            if frames:
                stacks[tuple(frames)] += int(count)
    return stacks


def summarise(paths: list[Path], top: int = 12) -> str:
    """A markdown table of the ``top`` functions by own time, with their inclusive time."""
    stacks = read_stacks(paths)
    samples = sum(stacks.values())
    if not samples:
        return "(no samples)"
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for frames, n in stacks.items():
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    rows = [f"| {name} | {own[name] / samples:.1%} | {total[name] / samples:.1%} |"
            for name, _ in own.most_common(top)]
    return "\n".join([f"{samples} busy samples (idle excluded)", "",
                      "| function (by own time) | own | incl. |", "|---|---|---|", *rows])


if __name__ == "__main__":
    print(summarise([Path(p) for p in sys.argv[1:]]))
