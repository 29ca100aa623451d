#!/usr/bin/env python3
"""Redis benchmark: meshproxy's redis_proxy against twemproxy and no proxy (issue 5, speed).

One run, on loopback, measures every target with the same client, ``redis-benchmark -c 50``
with random keys (``-r 100000``):

* ``P1``: ``-t set,get -P 1`` (one request in flight per connection: per-request latency);
* ``P16``: ``-t set,get -P 16`` (16 pipelined requests per connection: per-read cost);
* ``MSET10 P16``: redis-benchmark's built-in ``MSET (10 keys)`` at ``-P 16``;
* ``MGET10 P16``: ``MGET`` of 10 random keys (a custom command line) at ``-P 16``.

Targets: two redis-servers (no persistence) hold the data. ``direct`` is redis-benchmark
against the first of them alone: every "x direct" ratio is relative to one backend, as in
the issue. ``twemproxy`` is ``nutcracker`` (Debian's package) in the foreground with
``distribution: ketama``, ``hash: fnv1a_64``, ``server_connections: 1`` over both
backends. ``meshproxy`` is ``python -m meshproxy --concurrency 2`` (``--concurrency N``) with an
``envoy.filters.network.redis_proxy`` listener (``catch_all_route``) and a ``RING_HASH``
STATIC cluster of both backends. Before measuring, every key of the key space is written
to both backends, so a GET or MGET finds its value wherever a proxy routes it.

Noise: clients, servers and proxies share the machine, so each figure is the median of
``--rounds`` rounds; within a round the targets take turns per workload, in an order that
rotates every round, and ratios are paired (median over rounds of the per-round ratio).
Around each run the proxy's CPU time is read from /proc (CPU us per request, the steadiest
figure on a busy machine) and both backends' ``total_commands_processed`` (how many backend
commands one client request became, and how they split between the backends).

The issue's target, per workload: meshproxy's requests/s >= twemproxy's and its p99 <= 1.5x
twemproxy's. ``--profile`` then samples meshproxy's workers with py-spy during separate
GET runs at P1 and P16 (not part of the figures). Every process is started here and
stopped here by PID (tcp_bench.Processes), also on Ctrl-C or SIGTERM. See bench/README.md
for tcp_bench, whose helpers this file reuses.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import benchlib
import tcp_bench
import worker_profile
import yaml

REPO: Final = Path(__file__).resolve().parent.parent
OUT: Final = REPO / "bench" / "out"
PROXIES: Final = ("meshproxy", "twemproxy")
CLIENTS: Final = 50
KEYSPACE: Final = 100_000  # redis-benchmark -r: keys key:000000000000 .. key:000000099999
MULTI_KEYS: Final = 10
VALUE: Final = b"xxx"  # redis-benchmark's default value size (-d 3)
P99_LIMIT: Final = 1.5  # the issue: meshproxy's p99 no worse than 1.5x twemproxy's
# twemproxy / direct on the issue's machine (2 backends, one of them direct).
ISSUE_TWEMPROXY: Final = {"GET P1": 0.75, "GET P16": 0.40, "MGET10 P16": 0.44}
APT_PACKAGES: Final = {"redis-server": "redis-server", "redis-benchmark": "redis-tools",
                       "nutcracker": "nutcracker"}


@dataclass(frozen=True, slots=True)
class Workload:
    """One redis-benchmark invocation; ``scale`` x ``--requests`` requests per test in it."""

    name: str
    pipeline: int
    command: tuple[str, ...]  # ``-t tests`` or a command line
    tests: tuple[str, ...]  # the metric names it yields, in redis-benchmark's order
    scale: int
    floor_rps: int  # slower than this is a failure anyway: gives the run's time bound

    def requests(self, base: int) -> int:
        return base * self.scale


MGET_COMMAND: Final = ("MGET", *("key:__rand_int__",) * MULTI_KEYS)
WORKLOADS: Final = (
    Workload("P1", 1, ("-t", "set,get"), ("SET P1", "GET P1"), 1, 1_000),
    Workload("P16", 16, ("-t", "set,get"), ("SET P16", "GET P16"), 10, 5_000),
    Workload("MSET10 P16", 16, ("-t", "mset"), ("MSET10 P16",), 1, 500),
    Workload("MGET10 P16", 16, MGET_COMMAND, ("MGET10 P16",), 2, 1_000),
)
METRICS: Final = tuple(test for w in WORKLOADS for test in w.tests)


# ----- tools and versions -------------------------------------------------------------------


def ensure_tools() -> None:
    """Install the Debian packages of any missing tool; ``apt-get update`` only when needed."""
    benchlib.apt_install(benchlib.missing_packages(APT_PACKAGES))


def machine_lines() -> list[str]:
    return benchlib.machine_lines({
        "redis": ["redis-server", "--version"], "redis-benchmark": ["redis-benchmark", "--version"],
        "twemproxy": ["nutcracker", "--version"]})


# ----- talking to redis (RESP, no client library) -------------------------------------------


def resp_command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def key(index: int) -> bytes:
    """The key redis-benchmark's ``key:__rand_int__`` becomes for ``index`` (12 digits)."""
    return b"key:%012d" % index


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(1 << 20, size - len(data)))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def preload(port: int) -> None:
    """SET every key of the key space to VALUE, pipelined in batches."""
    batch = 10_000
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for start in range(0, KEYSPACE, batch):
            count = min(batch, KEYSPACE - start)
            sock.sendall(b"".join(resp_command(b"SET", key(i), VALUE) for i in range(start, start + count)))
            if recv_exactly(sock, 5 * count) != b"+OK\r\n" * count:
                raise RuntimeError(f"preloading port {port}: a SET failed")


def serves_keys(port: int, probes: int = 8) -> bool:
    """Whether GETs of preloaded keys come back with their value (through a proxy: relayed)."""
    expected = b"$%d\r\n%s\r\n" % (len(VALUE), VALUE)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"".join(resp_command(b"GET", key(i * 7919)) for i in range(probes)))
            return recv_exactly(sock, len(expected) * probes) == expected * probes
    except OSError:
        return False


def commands_processed(port: int) -> int:
    """The backend's ``total_commands_processed`` (INFO stats)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(resp_command(b"INFO", b"stats"))
        head = b""
        while not head.endswith(b"\r\n"):
            head += recv_exactly(sock, 1)
        body = recv_exactly(sock, int(head[1:]) + 2).decode()
    return int(body.split("total_commands_processed:", 1)[1].split("\r\n", 1)[0])


# ----- servers and proxies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    port: int
    process: tcp_bench.Started | None = None


def wait_serving(started: tcp_bench.Started, port: int, timeout: float = 30.0) -> None:
    """Wait until ``port`` answers GETs of preloaded keys; fail with the log tail if it cannot."""
    deadline = time.monotonic() + timeout
    while not serves_keys(port):
        if started.popen.poll() is not None or time.monotonic() > deadline:
            tail = started.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{started.name} does not serve on port {port}:\n{tail}")
        time.sleep(0.2)


def start_backends(procs: tcp_bench.Processes) -> list[int]:
    """Two preloaded redis-servers; returns their ports."""
    ports = tcp_bench.free_ports(2)
    for i, port in enumerate(ports):
        started = procs.start(f"redis-{i}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no", "--protected-mode", "no"])
        tcp_bench.wait_until(started, [("ping", port)])
        preload(port)
    return ports


def meshproxy_config(port: int, backends: list[int]) -> dict[str, object]:
    """Envoy v3 bootstrap: a redis_proxy listener routing everything to a RING_HASH cluster."""
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                 for p in backends]
    listener = {
        "name": "redis",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.redis_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
                "stat_prefix": "redis",
                "settings": {"op_timeout": "5s"},
                "prefix_routes": {"catch_all_route": {"cluster": "redis"}},
            },
        }]}],
    }
    cluster = {"name": "redis", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "RING_HASH",
               "load_assignment": {"cluster_name": "redis", "endpoints": [{"lb_endpoints": endpoints}]}}
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


def twemproxy_config(port: int, backends: list[int]) -> str:
    servers = "".join(f"  - 127.0.0.1:{p}:1\n" for p in backends)
    return ("bench:\n"
            f"  listen: 127.0.0.1:{port}\n"
            "  hash: fnv1a_64\n"
            "  distribution: ketama\n"
            "  redis: true\n"
            "  server_connections: 1\n"
            "  auto_eject_hosts: false\n"
            "  timeout: 5000\n"
            f"  servers:\n{servers}")


def free_base_id() -> int:
    """A ``--base-id`` whose stats segment does not exist, so no other meshproxy shares it
    (the other benchmarks start at 7000, 9000 and 9500 plus their PID modulo 1000)."""
    base = 8000 + os.getpid() % 1000
    return next(i for i in range(base, base + 1000) if not any(Path("/dev/shm").glob(f"meshproxy_*_{i}*")))


def start_proxy(procs: tcp_bench.Processes, name: str, backends: list[int], concurrency: int = 2) -> Target:
    """Start one proxy in front of both backends on a new port; returns once it relays GETs.
    ``concurrency``: meshproxy's workers (twemproxy is always one process)."""
    port, stats_port = tcp_bench.free_ports(2)
    workdir = procs.workdir
    if name == "meshproxy":
        config = workdir / "meshproxy.yaml"
        config.write_text(yaml.safe_dump(meshproxy_config(port, backends), sort_keys=False))
        argv = [sys.executable, "-m", "meshproxy", "-c", str(config), "--concurrency", str(concurrency),
                "-l", "warning", "--drain-time-s", "1", "--parent-shutdown-time-s", "2",
                "--base-id", str(free_base_id())]
        started = procs.start(name, argv, cwd=REPO)
    elif name == "twemproxy":
        config = workdir / "nutcracker.yml"
        config.write_text(twemproxy_config(port, backends))
        started = procs.start(name, ["nutcracker", "-c", str(config), "-o", str(workdir / "nutcracker.log"),
                                     "-s", str(stats_port), "-a", "127.0.0.1",
                                     "-p", str(workdir / "nutcracker.pid")])
    else:
        raise ValueError(f"unknown proxy {name!r}")
    wait_serving(started, port)
    return Target(name, port, started)


# ----- one measured run ---------------------------------------------------------------------


def run_benchmark(port: int, workload: Workload, requests: int) -> dict[str, tcp_bench.RedisFigure]:
    """The workload's figures by metric name; empty if the run failed or overran its bound."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS), "-n", str(requests),
            "-r", str(KEYSPACE), "-P", str(workload.pipeline), "-q", "--csv", *workload.command]
    timeout = 30 + len(workload.tests) * requests / workload.floor_rps
    done = tcp_bench.run_client(argv, timeout)
    if done is None:
        print(f"  {workload.name} on port {port}: no result within {timeout:.0f}s", flush=True)
        return {}
    status, out, err = done
    rows = list(tcp_bench.parse_benchmark_csv(out).values())
    if status != 0 or len(rows) != len(workload.tests):
        print(f"  {workload.name} on port {port} failed: {(err or out).strip()[-300:]}", flush=True)
        return {}
    return dict(zip(workload.tests, rows, strict=True))


def backend_commands(backends: list[int]) -> list[int]:
    return [commands_processed(p) for p in backends]


def proxy_cpu(target: Target) -> float:
    """CPU seconds (user + system) used so far by a proxy and its worker processes."""
    if target.process is None:
        return 0.0
    pid = target.process.popen.pid
    return sum(sum(worker_profile.cpu_times(p)) for p in (pid, *tcp_bench.child_pids(pid)))


def measure(target: Target, workload: Workload, args: argparse.Namespace, backends: list[int],
            turn: int, samples: tcp_bench.Samples) -> None:
    """Run ``workload`` once against ``target`` and record its figures for round ``turn``."""
    requests = workload.requests(args.requests)
    cpu_before, cmds_before = proxy_cpu(target), backend_commands(backends)
    figures = run_benchmark(target.port, workload, requests)
    if not figures:
        return
    sent = requests * len(workload.tests)
    cmds = [after - before for after, before in zip(backend_commands(backends), cmds_before, strict=True)]
    samples.add(target.name, f"cmds {workload.name}", turn, sum(cmds) / sent)
    samples.add(target.name, f"split {workload.name}", turn, cmds[0] / max(1, sum(cmds)))
    if target.process is not None:
        samples.add(target.name, f"cpu {workload.name}", turn, (proxy_cpu(target) - cpu_before) / sent * 1e6)
    for metric, fig in figures.items():
        samples.add(target.name, metric, turn, fig.rps)
        for quantile, value in (("p50", fig.p50_ms), ("p99", fig.p99_ms)):
            if value is not None:
                samples.add(target.name, f"{metric} {quantile}", turn, value)


def measure_round(targets: list[Target], backends: list[int], turn: int, args: argparse.Namespace,
                  samples: tcp_bench.Samples) -> list[float]:
    """Every workload on every target in turn; returns other load (CPU share) before each workload."""
    order = targets[turn % len(targets):] + targets[:turn % len(targets)]
    busy = []
    for workload in WORKLOADS:
        busy.append(tcp_bench.wait_for_quiet(args.quiet_wait))
        for target in order:
            measure(target, workload, args, backends, turn, samples)
    return busy


# ----- report -------------------------------------------------------------------------------


def _fmt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _x(ratio: float | None) -> str:
    return _fmt(ratio, "{:.2f}x")


def verdict(samples: tcp_bench.Samples, metric: str) -> tuple[float | None, float | None, str]:
    """(meshproxy/twemproxy requests/s, same for p99, MET or NOT MET), ratios paired by round."""
    rps = samples.ratio("meshproxy", "twemproxy", (metric,))
    p99 = samples.ratio("meshproxy", "twemproxy", (f"{metric} p99",))
    met = rps is not None and rps >= 1.0 and p99 is not None and p99 <= P99_LIMIT
    return rps, p99, "MET" if met else "NOT MET"


def figures_table(names: list[str], samples: tcp_bench.Samples) -> str:
    """Per metric: each target's requests/s (x direct) and p99, then the verdict against twemproxy."""
    judged = "meshproxy" in names and "twemproxy" in names
    header = ["workload", *(f"{n} req/s" for n in names), f"p99 ms ({' / '.join(names)})"]
    if judged:
        header += ["mesh/twem req/s", "mesh/twem p99", "verdict"]
    rows = []
    for metric in METRICS:
        row = [metric]
        for name in names:
            value = samples.median(name, metric)
            ratio = samples.ratio(name, "direct", (metric,)) if name != "direct" else None
            shown = "n/a" if value is None else f"{value:,.0f}"
            row.append(shown if ratio is None else f"{shown} ({ratio:.2f}x)")
        p99s = [samples.median(name, f"{metric} p99") for name in names]
        row.append(" / ".join("n/a" if p is None else f"{p:.2f}" for p in p99s))
        if judged:
            rps, p99, met = verdict(samples, metric)
            row += [_x(rps), _x(p99), met]
        rows.append(row)
    return tcp_bench.markdown_table(header, rows)


def cost_table(names: list[str], samples: tcp_bench.Samples) -> str:
    """Per workload and proxy: its CPU per request and what a request became on the backends."""
    rows = []
    for workload in WORKLOADS:
        for name in names:
            if name == "direct":
                continue
            cells = [_fmt(samples.median(name, f"{kind} {workload.name}"), fmt)
                     for kind, fmt in (("cpu", "{:.1f}"), ("cmds", "{:.2f}"), ("split", "{:.0%}"))]
            rows.append([workload.name, name, *cells])
    header = ["workload", "proxy", "proxy CPU us/request", "backend commands/request", "on backend 0"]
    return tcp_bench.markdown_table(header, rows)


def summary_lines(names: list[str], samples: tcp_bench.Samples) -> list[str]:
    lines = []
    if "twemproxy" in names:
        ours = ", ".join(f"{m} {_x(samples.ratio('twemproxy', 'direct', (m,)))} (issue {r:.2f}x)"
                         for m, r in ISSUE_TWEMPROXY.items())
        lines.append(f"twemproxy/direct here: {ours}")
    if "meshproxy" in names and "twemproxy" in names:
        failed = [m for m in METRICS if verdict(samples, m)[2] != "MET"]
        lines.append("meshproxy vs twemproxy (req/s >= 1.00x and p99 <= 1.5x on every workload): "
                     + ("MET" if not failed else f"NOT MET on {', '.join(failed)}"))
    spreads = []
    for name in names[1:]:
        for metric in METRICS:
            ratios = samples.round_ratios(name, "direct", (metric,))
            if len(ratios) > 1:
                spreads.append((max(ratios) - min(ratios), min(ratios), max(ratios), name, metric))
    if spreads:
        _, low, high, name, metric = max(spreads)
        lines.append(f"noise: per-round ratios to direct span up to {low:.2f}x-{high:.2f}x ({name} {metric})")
    return lines


# ----- profile ------------------------------------------------------------------------------


def keep_loaded(port: int, pipeline: int) -> Callable[[float], None]:
    """A load function for worker_profile: GETs at ``pipeline`` for about ``seconds``."""
    get = Workload(f"GET P{pipeline}", pipeline, ("-t", "get"), ("GET",), 1, 1_000)

    def load(seconds: float) -> None:
        end = time.monotonic() + seconds
        while end - time.monotonic() > 0.5:
            run_benchmark(port, get, 20_000 * pipeline)
    return load


def profile_meshproxy(target: Target, quick: bool) -> str:
    """py-spy meshproxy's workers under GET load at P1 and P16; returns the summaries."""
    worker_profile.ensure_py_spy()
    assert target.process is not None
    workers = tcp_bench.child_pids(target.process.popen.pid)
    OUT.mkdir(parents=True, exist_ok=True)
    parts = []
    for pipeline in (1, 16):
        outputs = [OUT / f"redis-profile-P{pipeline}-worker{i}.txt" for i in range(len(workers))]
        cpu = worker_profile.sample_workers(workers, outputs, 4 if quick else 10,
                                            keep_loaded(target.port, pipeline))
        parts.append(f"### meshproxy workers under GET P{pipeline} ({len(workers)} workers; raw stacks in "
                     f"{OUT.relative_to(REPO)}/redis-profile-P{pipeline}-*.txt)\n\n"
                     f"worker CPU: {cpu.user:.0%} user + {cpu.system:.0%} system (of one core, summed)\n\n"
                     + worker_profile.summarise([o for o in outputs if o.exists()], top=15))
        print("\n" + parts[-1], flush=True)
    return "\n\n".join(parts)


# ----- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one short round (< 1 minute)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per test at P1 (default 100000); P16 SET/GET run 10x, MGET10 2x")
    parser.add_argument("--rounds", type=int, default=None,
                        help="repetitions; figures are medians (default 3)")
    parser.add_argument("--only", default=",".join(PROXIES),
                        help=f"comma-separated proxies among {','.join(PROXIES)}; direct is always measured")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="before each workload, wait up to this many seconds for other load to drop "
                             f"under {tcp_bench.QUIET_BUSY * 100:.0f}%% of the CPUs "
                             "(default 60; 0 with --quick)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="meshproxy's worker processes (default 2; twemproxy is one process)")
    parser.add_argument("--profile", action="store_true", help="afterwards, py-spy meshproxy's workers")
    parser.add_argument("--json", type=Path, default=None, help="also write every sample to this file")
    args = parser.parse_args(argv)
    args.requests = args.requests or (5_000 if args.quick else 100_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 60.0
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(args.only) - set(PROXIES):
        parser.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    return args


def report(names: list[str], samples: tcp_bench.Samples) -> None:
    print("\n" + figures_table(names, samples))
    print("\n" + cost_table(names, samples) + "\n")
    print("\n".join(summary_lines(names, samples)), flush=True)


def run(procs: tcp_bench.Processes, args: argparse.Namespace) -> None:
    backends = start_backends(procs)
    targets = [Target("direct", backends[0])]
    for name in args.only:
        try:
            targets.append(start_proxy(procs, name, backends, args.concurrency))
        except RuntimeError as exc:  # one broken proxy should not cost the others' figures
            print(f"skipping {name}: {exc}", flush=True)
    samples = tcp_bench.Samples()
    for turn in range(args.rounds):
        started = time.monotonic()
        busy = measure_round(targets, backends, turn, args, samples)
        print(f"round {turn + 1}/{args.rounds} done in {time.monotonic() - started:.0f}s; CPUs busy with "
              f"other work before each workload: {', '.join(f'{b:.0%}' for b in busy)}", flush=True)
    report([t.name for t in targets], samples)
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(samples.to_json(), indent=1))
    mesh = next((t for t in targets if t.name == "meshproxy"), None)
    if args.profile and mesh is not None:
        profile_meshproxy(mesh, args.quick)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    print("\n".join(machine_lines()), flush=True)
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print(f"run: {args.rounds} round(s), {CLIENTS} clients, -r {KEYSPACE}; requests per test: "
          + ", ".join(f"{w.name} {w.requests(args.requests)}" for w in WORKLOADS), flush=True)
    with tcp_bench.terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="redis_bench-") as tmp:
        procs = tcp_bench.Processes(Path(tmp))
        try:
            run(procs, args)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping what was started", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
