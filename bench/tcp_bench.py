#!/usr/bin/env python3
"""TCP proxy benchmark: meshproxy's tcp_proxy against HAProxy, nginx stream and no proxy.

One run, on loopback, measures every target with the same clients:

* request/response: ``redis-benchmark -t set,get -c 50`` unpipelined (``-P 1``) and
  pipelined (``-P 16``) against a private redis-server; requests/s and p50/p99;
* bulk: ``iperf3 -c`` (one stream, ``-t S``) against a private iperf3 server; Gbit/s
  received.

Targets: ``direct`` (the servers themselves; every ratio is relative to it), ``meshproxy``
(``python -m meshproxy --concurrency 2`` with two tcp_proxy listeners), ``haproxy``
(``mode tcp``, ``nbthread 2``, ``option splice-auto``) and ``nginx`` (stream module,
``worker_processes 2``). The proxies get generated configs in a temporary directory and
run in the foreground as children of this script.

Around every run the proxy's CPU time (user and system, workers included) is read from
/proc, which gives its CPU cost per request and per GB: on two shared cores that cost,
more than latency, decides throughput, and it changes little with other load.

Noise: the machine is shared by clients, servers and proxies (and maybe other work), so
one figure is the median of ``--rounds`` runs; within a round the targets take turns in
an order that rotates every round, each workload waits (bounded) for other load to settle,
and ratios are paired per round (see ``Samples``).

Process hygiene: every process is started here, in its own session, and stopped here by
PID (SIGTERM, then SIGKILL), children included, also on Ctrl-C or an error. Every client
run has a time bound. Missing tools are installed with apt-get (CI machines start clean).

``--profile`` then samples meshproxy's workers with py-spy during separate P1, P16 and bulk
runs (sampling slows them, so those runs are not part of the figures) and prints where the
time goes. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import benchlib
import worker_profile
import yaml

REPO: Final = Path(__file__).resolve().parent.parent
OUT: Final = REPO / "bench" / "out"
PROXIES: Final = ("meshproxy", "haproxy", "nginx")
METRICS: Final = ("SET P1", "GET P1", "SET P16", "GET P16", "bulk")
CLIENTS: Final = 50
# HAProxy / direct on the issue's 2-core machine (P1, P16, bulk): a sanity check for this one.
ISSUE_HAPROXY: Final = (0.61, 0.57, 0.59)
# Time bounds derive from a floor throughput: a run slower than this is a failure anyway.
FLOOR_RPS: Final = {1: 2_000, 16: 20_000}
# Other load under this share of the CPUs counts as a quiet machine (see --quiet-wait).
QUIET_BUSY: Final = 0.25
NGINX_STREAM_MODULE: Final = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
# binary -> Debian package that provides it
APT_PACKAGES: Final = {
    "redis-server": "redis-server",
    "redis-benchmark": "redis-tools",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "iperf3": "iperf3",
}


# ----- tools --------------------------------------------------------------------------------


def missing_packages() -> list[str]:
    packages = benchlib.missing_packages(APT_PACKAGES)
    if not NGINX_STREAM_MODULE.exists() and not nginx_has_static_stream():
        packages.append("libnginx-mod-stream")
    return packages


def nginx_has_static_stream() -> bool:
    if shutil.which("nginx") is None:
        return False
    flags = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10).stderr.split()
    return "--with-stream" in flags


def ensure_tools() -> None:
    """Install the Debian packages of any missing tool; ``apt-get update`` only when needed."""
    benchlib.apt_install(missing_packages())


def machine_lines() -> list[str]:
    return benchlib.machine_lines({
        "redis": ["redis-server", "--version"], "haproxy": ["haproxy", "-v"], "nginx": ["nginx", "-v"],
        "iperf3": ["iperf3", "--version"]})


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def child_pids(pid: int) -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids.extend(int(p) for p in (task / "children").read_text().split())
    return pids


@dataclass(slots=True)
class Started:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class Processes:
    """Every long-running process this run started; ``stop_all`` ends them by PID, newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Started] = []

    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> Started:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=cwd or self.workdir, start_new_session=True)
        started = Started(name, popen, log)
        self.started.append(started)
        return started

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started.pop())

    @staticmethod
    def stop(started: Started) -> None:
        # Children (meshproxy and nginx workers) are remembered with their start time, so a
        # straggler is killed only if its PID still names the same process.
        children = [(pid, proc_start_time(pid)) for pid in child_pids(started.popen.pid)]
        if started.popen.poll() is None:
            started.popen.terminate()
            try:
                started.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                started.popen.kill()
                started.popen.wait(timeout=10)
        deadline = time.monotonic() + 5
        for pid, born in children:
            while born is not None and proc_start_time(pid) == born and time.monotonic() < deadline:
                time.sleep(0.05)
            if born is not None and proc_start_time(pid) == born:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now (bound together so they differ; freed on return)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def is_listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port``, read from /proc so nothing connects to it
    (an iperf3 server would count a bare connect as a failed test)."""
    needle = f":{port:04X} "
    with contextlib.suppress(OSError):
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if (fields[1] + " ").endswith(needle) and fields[3] == "0A":
                    return True
    return False


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(started: Started, ready: list[tuple[str, int]], timeout: float = 20.0) -> None:
    """Wait for each ``("listen"|"ping", port)`` check; fail with the log tail if the process exits."""
    deadline = time.monotonic() + timeout
    for kind, port in ready:
        check = redis_ping if kind == "ping" else is_listening
        while not check(port):
            if started.popen.poll() is not None or time.monotonic() > deadline:
                tail = started.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{started.name} not ready on port {port}:\n{tail}")
            time.sleep(0.1)


# ----- servers and proxies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    redis_port: int
    iperf_port: int
    process: Started | None = None


def start_servers(procs: Processes) -> Target:
    redis_port, iperf_port = free_ports(2)
    redis = procs.start("redis-server", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--protected-mode", "no"])
    iperf = procs.start("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)])
    wait_until(redis, [("ping", redis_port)])
    wait_until(iperf, [("listen", iperf_port)])
    return Target("direct", redis_port, iperf_port)


def haproxy_config(routes: dict[str, tuple[int, int]]) -> str:
    lines = ["global", "    nbthread 2", "    maxconn 4096", "",
             "defaults", "    mode tcp", "    option splice-auto", "    timeout connect 5s",
             "    timeout client 120s", "    timeout server 120s", ""]
    for name, (listen, upstream) in routes.items():
        lines += [f"listen {name}", f"    bind 127.0.0.1:{listen}",
                  f"    server {name} 127.0.0.1:{upstream}", ""]
    return "\n".join(lines)


def nginx_config(routes: dict[str, tuple[int, int]], workdir: Path) -> str:
    load = "" if nginx_has_static_stream() else f"load_module {NGINX_STREAM_MODULE};\n"
    servers = "".join(
        f"    server {{ listen 127.0.0.1:{listen} reuseport; proxy_pass 127.0.0.1:{upstream}; }}\n"
        for listen, upstream in routes.values())
    return (f"{load}worker_processes 2;\ndaemon off;\npid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/nginx-error.log warn;\n"
            "events { worker_connections 4096; }\n"
            f"stream {{\n{servers}}}\n")


def start_proxy(procs: Processes, name: str, direct: Target) -> Target:
    """Start one proxy in front of the servers, on new ports; returns once it relays."""
    redis_port, iperf_port = free_ports(2)
    routes = {"redis": (redis_port, direct.redis_port), "iperf": (iperf_port, direct.iperf_port)}
    workdir = procs.workdir
    if name == "meshproxy":
        config = workdir / "meshproxy.yaml"
        config.write_text(yaml.safe_dump(benchlib.tcp_proxy_bootstrap(routes), sort_keys=False))
        argv = [sys.executable, "-m", "meshproxy", "-c", str(config), "--concurrency", "2", "-l", "warning",
                "--drain-time-s", "1", "--parent-shutdown-time-s", "2",
                "--base-id", str(9000 + os.getpid() % 1000)]
        started = procs.start(name, argv, cwd=REPO)
    elif name == "haproxy":
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(routes))
        started = procs.start(name, ["haproxy", "-f", str(config), "-db"])
    elif name == "nginx":
        config = workdir / "nginx.conf"
        config.write_text(nginx_config(routes, workdir))
        started = procs.start(name, ["nginx", "-p", str(workdir), "-c", str(config),
                                     "-e", str(workdir / "nginx-error.log")])
    else:
        raise ValueError(f"unknown proxy {name!r}")
    wait_until(started, [("listen", iperf_port), ("ping", redis_port)])
    return Target(name, redis_port, iperf_port, started)


# ----- clients ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisFigure:
    rps: float
    p50_ms: float | None
    p99_ms: float | None


def run_client(argv: list[str], timeout: float) -> tuple[int, str, str] | None:
    """(exit status, stdout, stderr) of a client run; None if it overran ``timeout``.

    The client is killed and reaped on every way out, Ctrl-C included (``subprocess.run``
    waits only a moment for a child after a KeyboardInterrupt).
    """
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        return popen.returncode, out, err


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def parse_benchmark_csv(text: str) -> dict[str, RedisFigure]:
    """``redis-benchmark --csv``: a header row (Redis 7) or bare ``"TEST","rps"`` rows (older)."""
    figures: dict[str, RedisFigure] = {}
    rows = [row for row in csv.reader(io.StringIO(text)) if len(row) >= 2]
    header = rows[0] if rows and rows[0][0] == "test" else ["test", "rps"]
    for row in rows[1:] if rows and rows[0][0] == "test" else rows:
        fields = dict(zip(header, row, strict=False))
        rps = _float(fields.get("rps"))
        if rps is not None:
            figures[fields["test"]] = RedisFigure(rps, _float(fields.get("p50_latency_ms")),
                                                  _float(fields.get("p99_latency_ms")))
    return figures


def run_redis_benchmark(port: int, pipeline: int, requests: int) -> dict[str, RedisFigure]:
    """SET and GET figures for one target; empty if the run failed or overran its time bound."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-n", str(requests),
            "-c", str(CLIENTS), "-P", str(pipeline), "-q", "--csv"]
    timeout = 30 + 2 * requests / FLOOR_RPS[pipeline]
    done = run_client(argv, timeout)
    if done is None:
        print(f"  redis-benchmark -P {pipeline} on port {port}: no result within {timeout:.0f}s", flush=True)
        return {}
    status, out, err = done
    figures = parse_benchmark_csv(out)
    if status != 0 or len(figures) < 2:
        error = (err or out).strip()[-300:]
        print(f"  redis-benchmark -P {pipeline} on port {port} failed: {error}", flush=True)
    return figures


def run_iperf(port: int, seconds: float) -> float | None:
    """Gbit/s received by the iperf3 server over one stream; None if the run failed."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", f"{seconds:g}", "-J",
            "--connect-timeout", "3000"]
    for attempt in range(2):  # a server still busy with the previous test refuses one client
        done = run_client(argv, seconds + 30)
        report: object = None
        try:
            report = json.loads(done[1]) if done else None
            return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9  # type: ignore[index]
        except (ValueError, KeyError, TypeError):
            error = str(report.get("error", "no result")) if isinstance(report, dict) else "no JSON report"
        print(f"  iperf3 on port {port} (attempt {attempt + 1}): {error}", flush=True)
        time.sleep(1)
    return None


# ----- measurement --------------------------------------------------------------------------


class Samples:
    """Every figure by (target, metric) and round; a failed run leaves its round out.

    Ratios are paired: the median over rounds of (figure / base's figure in the same
    round). Load from elsewhere on the machine drifts over minutes, and a pair measured
    seconds apart shares most of it, so paired ratios are steadier than a ratio of medians.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)

    def add(self, target: str, metric: str, turn: int, value: float) -> None:
        self.values[target, metric][turn] = value

    def median(self, target: str, metric: str) -> float | None:
        values = self.values.get((target, metric))
        return statistics.median(values.values()) if values else None

    def round_ratios(self, target: str, base: str, metrics: tuple[str, ...]) -> list[float]:
        """Per round, the sum of ``metrics`` for ``target`` over the same sum for ``base``."""
        series = [self.values.get((who, m), {}) for who in (target, base) for m in metrics]
        rounds = set.intersection(*(set(s) for s in series))
        ours, theirs = series[:len(metrics)], series[len(metrics):]
        return [sum(s[r] for s in ours) / sum(s[r] for s in theirs)
                for r in sorted(rounds) if sum(s[r] for s in theirs)]

    def ratio(self, target: str, base: str, metrics: tuple[str, ...]) -> float | None:
        ratios = self.round_ratios(target, base, metrics)
        return statistics.median(ratios) if ratios else None

    def to_json(self) -> dict[str, dict[int, float]]:
        return {f"{target} {metric}": values for (target, metric), values in self.values.items()}


def proxy_cpu(target: Target) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by a proxy and its worker processes."""
    if target.process is None:
        return 0.0, 0.0
    pid = target.process.popen.pid
    times = [worker_profile.cpu_times(p) for p in (pid, *child_pids(pid))]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval`` s (/proc/stat). Between our runs our own
    servers and proxies are idle, so this is other people's load."""
    def snapshot() -> tuple[int, int]:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait
    total0, idle0 = snapshot()
    time.sleep(interval)
    total1, idle1 = snapshot()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(limit: float) -> float:
    """Wait up to ``limit`` s until other load is under ``QUIET_BUSY``; returns the last reading."""
    deadline = time.monotonic() + limit
    while (busy := cpu_busy(2.0)) >= QUIET_BUSY and time.monotonic() < deadline:
        pass
    return busy


def run_workload(target: Target, workload: str, turn: int, args: argparse.Namespace,
                 samples: Samples) -> float | None:
    """Run one workload (P1, P16, bulk) on one target and record its figures. Returns the work
    done in the unit the CPU table uses (millions of requests, or GB), None if it failed."""
    if workload == "bulk":
        gbits = run_iperf(target.iperf_port, args.seconds)
        if gbits is None:
            return None
        samples.add(target.name, "bulk", turn, gbits)
        return gbits * args.seconds / 8
    pipeline = int(workload[1:])
    requests = args.requests * (1 if pipeline == 1 else 10)
    figures = run_redis_benchmark(target.redis_port, pipeline, requests)
    for test, fig in figures.items():
        name = f"{test} {workload}"
        samples.add(target.name, name, turn, fig.rps)
        for quantile, value in (("p50", fig.p50_ms), ("p99", fig.p99_ms)):
            if value is not None:
                samples.add(target.name, f"{name} {quantile}", turn, value)
    return 2 * requests / 1e6 if len(figures) == 2 else None


def measure_round(targets: list[Target], turn: int, args: argparse.Namespace,
                  samples: Samples) -> list[float]:
    """One round: P1, P16 and bulk on every target in turn, with each proxy's CPU time per
    unit of work. Returns the machine's busy fraction (other load) before each workload."""
    order = targets[turn % len(targets):] + targets[:turn % len(targets)]
    busy = []
    for workload in ("P1", "P16", "bulk"):
        busy.append(wait_for_quiet(args.quiet_wait))
        for target in order:
            before = proxy_cpu(target)
            work = run_workload(target, workload, turn, args, samples)
            if work and target.process is not None:
                after = proxy_cpu(target)
                samples.add(target.name, f"cpu {workload}", turn, (sum(after) - sum(before)) / work)
                samples.add(target.name, f"cpu user {workload}", turn, (after[0] - before[0]) / work)
    return busy


# ----- report -------------------------------------------------------------------------------

# The issue's three targets: P1 and P16 add SET and GET requests/s.
SUMMARY: Final = (("P1", ("SET P1", "GET P1")), ("P16", ("SET P16", "GET P16")), ("bulk", ("bulk",)))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def throughput_table(names: list[str], samples: Samples) -> str:
    header = ["target", "SET P1 req/s", "GET P1 req/s", "SET P16 req/s", "GET P16 req/s", "bulk Gbit/s"]
    rows = []
    for name in names:
        row = [name]
        for metric in METRICS:
            value, ratio = samples.median(name, metric), samples.ratio(name, "direct", (metric,))
            if value is None:
                row.append("n/a")
                continue
            shown = f"{value:.1f}" if metric == "bulk" else f"{value:,.0f}"
            row.append(shown if ratio is None else f"{shown} ({ratio:.2f}x)")
        rows.append(row)
    return markdown_table(header, rows)


def latency_table(names: list[str], samples: Samples) -> str:
    header = ["target", *(f"{m} p50/p99 ms" for m in METRICS[:4])]
    rows = []
    for name in names:
        row = [name]
        for metric in METRICS[:4]:
            p50, p99 = samples.median(name, f"{metric} p50"), samples.median(name, f"{metric} p99")
            row.append("n/a" if p50 is None or p99 is None else f"{p50:.2f} / {p99:.2f}")
        rows.append(row)
    return markdown_table(header, rows)


def cpu_table(names: list[str], samples: Samples) -> str:
    """Each proxy's CPU (user + system) per unit of work with its ratio to HAProxy's (lower is
    cheaper), and the user part: system time follows the syscalls, user time the proxy's code."""
    columns = (("P1", "P1 CPU us/request", "{:.1f}"), ("P16", "P16 CPU us/request", "{:.2f}"),
               ("bulk", "bulk CPU s/GB", "{:.3f}"))
    rows = []
    for name in names[1:]:
        row = [name]
        for workload, _, fmt in columns:
            total = samples.median(name, f"cpu {workload}")
            user = samples.median(name, f"cpu user {workload}")
            if total is None or user is None:
                row.append("n/a")
                continue
            ratio = samples.ratio(name, "haproxy", (f"cpu {workload}",)) if "haproxy" in names else None
            shown = fmt.format(total) + ("" if ratio is None else f" ({ratio:.2f}x)")
            row.append(f"{shown}, user {fmt.format(user)}")
        rows.append(row)
    return markdown_table(["proxy", *(title for _, title, _ in columns)], rows)


def _shown(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def verdict_lines(names: list[str], samples: Samples) -> list[str]:
    """haproxy against direct (next to the issue's figures), then every other proxy against haproxy."""
    if "haproxy" not in names:
        return ["no verdict: haproxy was not measured"]
    ours = ", ".join(f"{label} {_shown(samples.ratio('haproxy', 'direct', m))}" for label, m in SUMMARY)
    issue = ", ".join(f"{label} {r:.2f}x" for (label, _), r in zip(SUMMARY, ISSUE_HAPROXY, strict=True))
    lines = [f"haproxy/direct here: {ours} (issue's machine: {issue})"]
    for name in names:
        if name in ("direct", "haproxy"):
            continue
        ratios = [samples.ratio(name, "haproxy", metrics) for _, metrics in SUMMARY]
        met = all(r is not None and r >= 1.0 for r in ratios)
        parts = ", ".join(f"{label} {_shown(r)}" for (label, _), r in zip(SUMMARY, ratios, strict=True))
        lines.append(f"{name} vs haproxy (target >= 1.00x): {parts} -> {'MET' if met else 'NOT MET'}")
    return lines


def noise_line(names: list[str], samples: Samples) -> str:
    """The widest range of per-round ratios to direct: differences inside it are noise."""
    ranges = []
    for name in names[1:]:
        for metric in METRICS:
            ratios = samples.round_ratios(name, "direct", (metric,))
            if len(ratios) > 1:
                ranges.append((max(ratios) - min(ratios), min(ratios), max(ratios), name, metric))
    if not ranges:
        return "noise: one round only, no spread"
    _, low, high, name, metric = max(ranges)
    return (f"noise: per-round ratios to direct span up to {low:.2f}x-{high:.2f}x ({name} {metric}); "
            "figures and ratios are medians over rounds")


# ----- profile ------------------------------------------------------------------------------


def keep_loaded(target: Target, workload: str, seconds: float) -> None:
    """Keep ``workload`` (P1, P16 or bulk) running against ``target`` for about ``seconds``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0.5:
        if workload == "bulk":
            run_iperf(target.iperf_port, max(1, round(left)))
        else:
            pipeline = int(workload[1:])
            run_redis_benchmark(target.redis_port, pipeline, 20_000 * pipeline)


def profile_meshproxy(target: Target, quick: bool) -> None:
    """py-spy every meshproxy worker under P1, P16 and bulk load; print where the time goes."""
    worker_profile.ensure_py_spy()
    assert target.process is not None
    workers = child_pids(target.process.popen.pid)
    OUT.mkdir(parents=True, exist_ok=True)
    for workload in ("P1", "P16", "bulk"):
        outputs = [OUT / f"profile-{workload}-worker{i}.txt" for i in range(len(workers))]
        load = functools.partial(keep_loaded, target, workload)
        cpu = worker_profile.sample_workers(workers, outputs, 4 if quick else 10, load)
        print(f"\n### meshproxy workers under {workload} load ({len(workers)} workers; "
              f"raw stacks in {OUT.relative_to(REPO)}/profile-{workload}-*.txt)\n")
        print(f"worker CPU: {cpu.user:.0%} user + {cpu.system:.0%} system (of one core, summed over workers)")
        print(worker_profile.summarise([o for o in outputs if o.exists()]), flush=True)


# ----- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one short round (< 1 minute)")
    parser.add_argument("--requests", type=int, default=None,
                        help="redis-benchmark requests per test at P1; P16 runs 10x as many (default 100000)")
    parser.add_argument("--seconds", type=float, default=None, help="iperf3 duration per run (default 5)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="repetitions; figures are medians (default 3)")
    parser.add_argument("--only", default=",".join(PROXIES),
                        help=f"comma-separated proxies among {','.join(PROXIES)}; direct is always measured")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="before each workload, wait up to this many seconds for other load to drop "
                             f"under {QUIET_BUSY * 100:.0f}%% of the CPUs (default 120; 0 with --quick)")
    parser.add_argument("--profile", action="store_true", help="afterwards, py-spy meshproxy's workers")
    parser.add_argument("--json", type=Path, default=None, help="also write every sample to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.requests = args.requests or (10_000 if quick else 100_000)
    args.seconds = args.seconds or (2.0 if quick else 5.0)
    args.rounds = args.rounds or (1 if quick else 3)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if quick else 120.0
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.only) - set(PROXIES)
    if unknown:
        parser.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` that stops our processes runs."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    print("\n".join(machine_lines()), flush=True)
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print(f"run: {args.rounds} round(s), {args.requests} requests at P1 and {args.requests * 10} at P16, "
          f"{CLIENTS} clients, iperf3 {args.seconds:g}s", flush=True)
    samples = Samples()
    with terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="tcp_bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            direct = start_servers(procs)
            targets = [direct]
            for name in args.only:
                try:
                    targets.append(start_proxy(procs, name, direct))
                except RuntimeError as exc:  # one broken proxy should not cost the others' figures
                    print(f"skipping {name}: {exc}", flush=True)
            for turn in range(args.rounds):
                started = time.monotonic()
                busy = measure_round(targets, turn, args, samples)
                print(f"round {turn + 1}/{args.rounds} done in {time.monotonic() - started:.0f}s; CPUs busy "
                      f"with other work before P1, P16, bulk: {', '.join(f'{b:.0%}' for b in busy)}",
                      flush=True)
            names = [t.name for t in targets]
            print("\n" + throughput_table(names, samples))
            print("\n" + latency_table(names, samples))
            print("\n" + cpu_table(names, samples) + "\n")
            print("\n".join([*verdict_lines(names, samples), noise_line(names, samples)]))
            print(f"load average after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(samples.to_json(), indent=1))
            mesh = next((t for t in targets if t.name == "meshproxy"), None)
            if args.profile and mesh is not None:
                profile_meshproxy(mesh, args.quick)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping what was started", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
