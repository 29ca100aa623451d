"""What rate limiting costs: new-connection rate through tcp_proxy with and without the limiters,
the host-wide bucket's primitives, and decisions/s of the Redis-backed limiter.

    python bench/ratelimit_bench.py            # 6 rounds of 4 s per target, ~3 minutes
    python bench/ratelimit_bench.py --quick    # 1 round of 3 s, for a smoke run

Everything runs on 127.0.0.1 from this checkout:

* **upstream**: this file with ``--serve``, a uvloop server that echoes and closes at EOF;
* **redis-server** (no persistence) for the Redis-backed limiter;
* **meshproxy** ``--concurrency 2`` with three listeners to the upstream:
  ``plain`` (tcp_proxy), ``local`` (local_ratelimit + tcp_proxy; a bucket so large it never
  empties, so every connection pays for a taken token) and ``redis`` (redis_ratelimit +
  tcp_proxy, fixed window, a limit never reached, 1 s timeout so a busy machine does not
  turn decisions into errors);
* **client**: this file with ``--client``: uvloop, ``--connections`` loops that each connect,
  send one byte, read it back and close, again and again. One completed loop is one new
  connection through the proxy.

Targets alternate within a round and rounds rotate the order; each figure is the median
over rounds, each ratio the median of per-round ratios. ``CPU us/cx`` is the workers' user +
system CPU time per connection, the steadiest figure on a busy machine. The issue's target:
the local limiter costs under 10% of the connection rate (local/plain >= 0.90).

Then, in this process: the bucket's primitives (best of several timeit repeats), and the
Redis limiter alone on a uvloop loop against the same redis-server: one decision at a time
(latency) and 256 in flight (throughput), for both algorithms, over 1000 distinct clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any, Final

import yaml

REPO: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import tcp_bench  # noqa: E402  (processes, ports, quiet-machine waits shared with the tcp benchmark)
import worker_profile  # noqa: E402

TARGETS: Final = ("plain", "local", "redis")
NEVER_EMPTY: Final = 4_000_000_000  # tokens (and requests per second): a limit never reached


# ----- upstream and client (subprocesses) ------------------------------------------------------


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        return False  # close


def serve(port: int) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    uvloop.run(main())


class OneByte(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(b"x")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.close()
        if not self.done.done():
            self.done.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


def client(port: int, connections: int, seconds: float) -> None:
    import uvloop

    async def loop_connections(counts: list[int], stop: list[bool]) -> None:
        loop = asyncio.get_running_loop()
        while not stop[0]:
            done: asyncio.Future[bool] = loop.create_future()
            try:
                await loop.create_connection(lambda d=done: OneByte(d), "127.0.0.1", port)  # type: ignore[misc]
                counts[0 if await done else 1] += 1
            except OSError:
                counts[1] += 1

    async def main() -> dict[str, float]:
        counts, stop = [0, 0], [False]
        tasks = [asyncio.create_task(loop_connections(counts, stop)) for _ in range(connections)]
        await asyncio.sleep(0.5)  # warm-up
        start, before = time.monotonic(), counts[0]
        await asyncio.sleep(seconds)
        elapsed, completed = time.monotonic() - start, counts[0] - before
        stop[0] = True
        await asyncio.gather(*tasks)
        return {"connections": completed, "failed": counts[1], "seconds": elapsed}

    print(json.dumps(uvloop.run(main())))


# ----- the proxy run ---------------------------------------------------------------------------------


def meshproxy_config(ports: dict[str, int], upstream: int, redis_port: int) -> dict[str, Any]:
    tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "bench", "cluster": "upstream"}}
    local = {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench",
        "token_bucket": {"max_tokens": NEVER_EMPTY, "tokens_per_fill": NEVER_EMPTY, "fill_interval": "1s"}}}
    redis = {"name": "meshproxy.filters.network.redis_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/meshproxy.filters.network.redis_ratelimit.v1.RedisRateLimit",
        "stat_prefix": "bench", "domain": "bench", "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        "timeout": "1s", "descriptors": [{"entries": [{"key": "client", "value": "bench"}]}],
        "limits": {"domain": "bench", "descriptors": [{"key": "client", "rate_limit": {
            "unit": "second", "requests_per_unit": NEVER_EMPTY}}]}}}
    chains = {"plain": [tcp], "local": [local, tcp], "redis": [redis, tcp]}
    listeners = [{"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                  "filter_chains": [{"filters": chains[name]}]} for name, port in ports.items()]
    cluster = {"name": "upstream", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}}
    return {"static_resources": {"listeners": listeners, "clusters": [cluster]}}


def worker_cpu(proxy: tcp_bench.Started) -> float:
    return sum(sum(worker_profile.cpu_times(p)) for p in tcp_bench.child_pids(proxy.popen.pid))


def run_client(port: int, connections: int, seconds: float) -> dict[str, float]:
    argv = [sys.executable, __file__, "--client", str(port), str(connections), str(seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(done.stdout)


def measure_proxy(procs: tcp_bench.Processes, workdir: Path, redis_port: int,
                  args: argparse.Namespace) -> dict[tuple[str, str], list[float]]:
    upstream, *listener_ports = tcp_bench.free_ports(1 + len(TARGETS))
    ports = dict(zip(TARGETS, listener_ports, strict=True))
    procs.start("upstream", [sys.executable, __file__, "--serve", str(upstream)], cwd=REPO)
    config = workdir / "meshproxy.yaml"
    config.write_text(yaml.safe_dump(meshproxy_config(ports, upstream, redis_port), sort_keys=False))
    argv = [sys.executable, "-m", "meshproxy", "-c", str(config), "--concurrency", "2", "-l", "warning",
            "--drain-time-s", "1", "--base-id", str(9100 + os.getpid() % 400)]
    proxy = procs.start("meshproxy", argv, cwd=REPO)
    tcp_bench.wait_until(proxy, [("listen", upstream), *(("listen", p) for p in ports.values())])
    time.sleep(1.0)  # workers' loops up (the Redis limiter connects at start)
    samples: dict[tuple[str, str], list[float]] = {}
    for turn in range(args.rounds):
        busy = tcp_bench.wait_for_quiet(args.quiet_wait) if args.quiet_wait else tcp_bench.cpu_busy()
        print(f"round {turn + 1}: other load {busy:.0%} of the CPUs, load average {os.getloadavg()[0]:.1f}",
              flush=True)
        targets = tuple(t for t in TARGETS if t in args.targets)
        order = targets if turn % 2 == 0 else targets[::-1]  # ABC CBA: slow drifts cancel out
        for target in order:
            cpu0 = worker_cpu(proxy)
            result = run_client(ports[target], args.connections, args.seconds)
            cpu = worker_cpu(proxy) - cpu0
            rate = result["connections"] / result["seconds"]
            cpu_us = cpu / max(1, result["connections"]) * 1e6
            samples.setdefault((target, "cx/s"), []).append(rate)
            samples.setdefault((target, "cpu_us"), []).append(cpu_us)
            print(f"round {turn + 1} {target:>6}: {rate:7.0f} cx/s, {cpu_us:6.1f} us worker CPU/cx, "
                  f"{result['failed']:.0f} failed", flush=True)
    return samples


def report_proxy(samples: dict[tuple[str, str], list[float]]) -> float:
    """Print the table and the verdict; returns plain's median worker CPU per connection (µs)."""
    print("\n| target | new cx/s | vs plain | worker CPU us/cx |")
    print("|---|---|---|---|")
    plain = samples[("plain", "cx/s")]
    for target in (t for t in TARGETS if (t, "cx/s") in samples):
        rates = samples[(target, "cx/s")]
        ratios = [r / p for r, p in zip(rates, plain, strict=True)]
        cpu_us = statistics.median(samples[(target, "cpu_us")])
        print(f"| {target} | {statistics.median(rates):.0f} | {statistics.median(ratios):.2f}x "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f}) | {cpu_us:.1f} |")
    if ("local", "cx/s") in samples:
        ratio = statistics.median(r / p for r, p in zip(samples[("local", "cx/s")], plain, strict=True))
        verdict = "meets" if ratio >= 0.90 else "MISSES"
        print(f"\nlocal limiter keeps {ratio:.1%} of tcp_proxy's connection rate "
              f"({verdict} the >= 90% target)")
    return statistics.median(samples[("plain", "cpu_us")])


# ----- in process ------------------------------------------------------------------------------------


def micro(repeat: int = 7, number: int = 20_000) -> dict[str, float]:
    """ns per call, best of ``repeat`` runs of ``number`` calls."""
    import fcntl

    from filters.local_ratelimit.shared_bucket import HostSharedRegion

    region = HostSharedRegion.create("bench_limits")
    bucket = region.token_bucket("bench", NEVER_EMPTY, 1, 3600.0)
    empty = region.token_bucket("empty", 1, 1, 3600.0)
    empty.try_take()
    counter = region.connection_counter("bench")
    fd = region.lock_fd()

    def best(stmt: Any) -> float:
        return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9

    def lock_pair() -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)

    def acquire_release() -> None:
        counter.acquire(1 << 60)
        counter.release()

    from filters.local_ratelimit import filter as local_filter
    from filters.local_ratelimit.config import LocalRateLimitConfig, TokenBucket
    from stats_shm import HeapStore

    class Worker:  # what the filter's build uses
        stats = HeapStore()
        host_shared = region

    class Callbacks:
        def close(self, flush: bool = True) -> None:
            pass

    config = LocalRateLimitConfig("bench", TokenBucket(NEVER_EMPTY, 1, 3600.0), True, "bench")
    make = local_filter.build(config, Worker())  # type: ignore[arg-type]
    callbacks = Callbacks()

    def per_connection() -> None:  # what a connection pays for the filter: create, initialize, decide
        f = make()
        f.initialize(callbacks)  # type: ignore[arg-type]
        f.on_new_connection()

    figures = {"flock(LOCK_EX) + flock(LOCK_UN)": best(lock_pair),
               "bucket.try_take(), a token taken": best(bucket.try_take),
               "bucket.try_take(), empty (no lock)": best(empty.try_take),
               "counter.acquire() + release()": best(acquire_release),
               "local_ratelimit per connection (filter made, initialized, token taken)": best(per_connection)}
    region.close()
    return figures


def redis_decisions(redis_port: int, seconds: float) -> dict[str, dict[str, float]]:
    import uvloop

    from filters.ratelimit.descriptors import DescriptorSet
    from filters.ratelimit.filter import LimitStatus
    from filters.redis_ratelimit.algorithms import Algorithm
    from filters.redis_ratelimit.config import RedisRateLimitConfig
    from filters.redis_ratelimit.limiter import RedisLimiter
    from filters.redis_ratelimit.lyft_config import parse_lyft_config
    from filters.redis_ratelimit.stats import RedisRateLimitStats
    from stats_shm import HeapStore

    limits = parse_lyft_config({"domain": "bench", "descriptors": [
        {"key": "client", "rate_limit": {"unit": "second", "requests_per_unit": NEVER_EMPTY}}]})
    clients = [((("client", f"10.0.{i // 256}.{i % 256}"),),) for i in range(1000)]
    results: dict[str, dict[str, float]] = {}

    async def run(algorithm: Algorithm, in_flight: int) -> dict[str, float]:
        config = RedisRateLimitConfig("bench", "bench", DescriptorSet(()), limits,
                                      f"redis://127.0.0.1:{redis_port}/0", algorithm=algorithm, timeout=1.0)
        loop = asyncio.get_running_loop()
        limiter = RedisLimiter(config, loop, RedisRateLimitStats(HeapStore(), "bench."))
        limiter.start()
        await asyncio.sleep(0.2)
        latencies: list[float] = []
        errors = [0]
        deadline = time.monotonic() + seconds

        async def one_after_another(offset: int) -> None:
            i = offset
            while time.monotonic() < deadline:
                future: asyncio.Future[LimitStatus] = loop.create_future()
                began = time.perf_counter()
                limiter.limit(clients[i % len(clients)], lambda status, flags, f=future: f.set_result(status))
                if await future is not LimitStatus.OK:
                    errors[0] += 1
                latencies.append(time.perf_counter() - began)
                i += in_flight

        start = time.monotonic()
        await asyncio.gather(*(one_after_another(k) for k in range(in_flight)))
        elapsed = time.monotonic() - start
        await limiter.close()
        latencies.sort()
        return {"decisions/s": len(latencies) / elapsed, "p50 ms": latencies[len(latencies) // 2] * 1e3,
                "p99 ms": latencies[int(len(latencies) * 0.99)] * 1e3, "not OK": errors[0]}

    for algorithm in Algorithm:
        for in_flight in (1, 256):
            results[f"{algorithm.name}, {in_flight} in flight"] = uvloop.run(run(algorithm, in_flight))
    return results


# ----- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s per target")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=32, help="client loops (connections at once)")
    parser.add_argument("--targets", type=lambda text: set(text.split(",")), default=set(TARGETS),
                        help="listeners to measure, e.g. plain,local (plain is always measured)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each round, wait up to S s for other load to drop under 25%%")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.quiet_wait = 1, 3.0, 0.0
    args.targets.add("plain")
    print(f"load average before: {os.getloadavg()[0]:.1f}, CPUs: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="ratelimit_bench.") as tmp:
        procs = tcp_bench.Processes(Path(tmp))
        try:
            (redis_port,) = tcp_bench.free_ports(1)
            redis = procs.start("redis-server", ["redis-server", "--port", str(redis_port), "--bind",
                                                 "127.0.0.1", "--save", "", "--appendonly", "no"])
            tcp_bench.wait_until(redis, [("ping", redis_port)])
            plain_cpu_us = report_proxy(measure_proxy(procs, Path(tmp), redis_port, args))
            print("\n| primitive | ns per call |\n|---|---|")
            figures = micro()
            for name, ns in figures.items():
                print(f"| `{name}` | {ns:.0f} |")
            per_cx = figures["local_ratelimit per connection (filter made, initialized, token taken)"]
            print(f"\nlocal_ratelimit adds {per_cx / 1000:.1f} us to the {plain_cpu_us:.0f} us of worker CPU "
                  f"a connection costs through tcp_proxy: {per_cx / 1000 / plain_cpu_us:.1%}")
            print("\n| Redis limiter, in process | decisions/s | p50 ms | p99 ms |\n|---|---|---|---|")
            for name, figures in redis_decisions(redis_port, args.seconds / 2).items():
                failed = f" ({figures['not OK']:.0f} not OK)" if figures["not OK"] else ""
                print(f"| {name} | {figures['decisions/s']:.0f} | {figures['p50 ms']:.2f} | "
                      f"{figures['p99 ms']:.2f} |{failed}")
        finally:
            procs.stop_all()
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(main())
