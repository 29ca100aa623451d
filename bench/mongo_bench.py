"""What the Mongo sniffer costs: OP_MSG request/reply throughput through tcp_proxy alone and
through mongo_proxy + tcp_proxy, on the same meshproxy worker.

    python bench/mongo_bench.py            # 3 rounds of 8 s per workload and target, ~2 minutes
    python bench/mongo_bench.py --quick    # 1 round of 3 s, for a smoke run
    python bench/mongo_bench.py --micro    # also: the filter alone, in process (no sockets)
    python bench/mongo_bench.py --micro-only   # only that (~1 minute)
    python bench/mongo_bench.py --profile  # afterwards, py-spy the worker under both workloads
    python bench/mongo_bench.py --calibrate 0,10   # also filters burning 0 / 10 us of CPU per read

Everything runs on 127.0.0.1 from this checkout:

* **upstream**: a minimal OP_MSG server (uvloop, this file with ``--serve``) answering every
  request with a canned ``find`` reply (one 80-byte document, cursor id 0) whose ``responseTo``
  is the request's id, so the sniffer matches and times every reply;
* **meshproxy** with ``--concurrency 1`` and two listeners to that server: ``plain``
  (tcp_proxy) and ``sniffed`` (mongo_proxy + tcp_proxy, no access log);
* **client**: this file with ``--client``, uvloop, sending a 143-byte pymongo-style ``find``
  (``filter: {_id}``, ``limit``, ``singleBatch``, ``lsid``, ``$db``) per request.

Workloads: ``P1`` = 32 connections with one request in flight each (how drivers use a
connection: per-request cost dominates), and ``P16`` = 8 connections with 16 pipelined requests
each (many messages per read: the sniffer's per-message cost against tcp_proxy's per-read
cost). Targets alternate within a round and rounds rotate the order; each figure is the median
over rounds and each ratio the median of per-round ratios. ``CPU us/rq`` is the worker's
user + system CPU time per request/reply pair, the steadiest figure on a busy machine. The
issue's target: sniffed/plain throughput >= 0.75 (the sniffer costs under 25%).

``plain`` runs in tcp_proxy's relay mode (no Python per chunk once connected); any chain with a
filter that reads the bytes cannot. ``--calibrate 0`` (a pass-through filter that reads nothing)
shows what losing relay mode alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import bson
import yaml

REPO: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import tcp_bench  # noqa: E402  (processes, ports, CPU readings shared with the tcp benchmark)
import worker_profile  # noqa: E402

LSID: Final = {"id": bson.Binary(bytes(range(16)), 4)}
REQUEST_BODY: Final = bson.encode(
    {"find": "users", "filter": {"_id": 7}, "limit": 1, "singleBatch": True, "lsid": LSID, "$db": "bench"}
)
_DOC: Final = {"_id": 7, "name": "user7", "email": "u7@example.com", "age": 33}
REPLY_BODY: Final = bson.encode(
    {"cursor": {"firstBatch": [_DOC], "id": bson.Int64(0), "ns": "bench.users"}, "ok": 1.0}
)
WORKLOADS: Final = {"P1": (32, 1), "P16": (8, 16)}  # name -> (connections, requests in flight each)

# --calibrate: a pass-through filter that burns a fixed CPU time per read in each direction, loaded
# into meshproxy with --filter-module. Its ratio to plain says what a filter of known cost keeps.
SPIN_MODULE: Final = '''"""mongo_bench --calibrate: burns a fixed CPU time per read, each way."""
import time

from filters.api import FilterStatus, NetworkFilter
from filters.config_schema import Message, integer
from filters.registry import FilterType, register

_clock = time.thread_time


class Spin(NetworkFilter):
    inspects_data = True

    def __init__(self, seconds):
        self.seconds = seconds

    def on_data(self, data, end_stream):
        end = _clock() + self.seconds
        while _clock() < end:
            pass
        return FilterStatus.CONTINUE

    on_write = on_data


SCHEMA = Message("mongo_bench.Spin", fields={"us": integer()},
                 build=lambda fields, ctx, path: fields["us"] / 1e6)
register(FilterType(name="mongo_bench.spin", message="mongo_bench.Spin", parse=SCHEMA.parse,
                    build=lambda seconds, worker: lambda: Spin(seconds)))
'''


def op_msg(body: bytes, request_id: int, response_to: int) -> bytes:
    payload = b"\x00\x00\x00\x00\x00" + body
    return struct.pack("<iiii", 16 + len(payload), request_id, response_to, 2013) + payload


# ----- the upstream server and the client (separate processes) -----------------------------------


class ServerProtocol(asyncio.Protocol):
    """Answers each framed request with the canned reply, responseTo = its requestID."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.head = struct.pack("<ii", 16 + 5 + len(REPLY_BODY), 1)
        self.tail = struct.pack("<i", 2013) + b"\x00\x00\x00\x00\x00" + REPLY_BODY

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 16:
            length = int.from_bytes(buf[pos:pos + 4], "little")
            if len(buf) - pos < length:
                break
            out.append(self.head + bytes(buf[pos + 4:pos + 8]) + self.tail)
            pos += length
        del buf[:pos]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


class ClientProtocol(asyncio.Protocol):
    """Keeps ``depth`` requests in flight; counts replies."""

    def __init__(self, depth: int, counter: list[int]) -> None:
        self.depth = depth
        self.counter = counter
        self.buf = bytearray()
        self.next_id = 1
        self.running = True

    def request(self, n: int) -> bytes:
        first = self.next_id
        self.next_id += n
        return b"".join(op_msg(REQUEST_BODY, i, 0) for i in range(first, first + n))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request(self.depth))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = replies = 0
        while len(buf) - pos >= 4:
            length = int.from_bytes(buf[pos:pos + 4], "little")
            if len(buf) - pos < length:
                break
            pos += length
            replies += 1
        del buf[:pos]
        self.counter[0] += replies
        if replies and self.running:
            self.transport.write(self.request(replies))  # type: ignore[attr-defined]


def serve(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(ServerProtocol, "127.0.0.1", port, backlog=512)
        await server.serve_forever()

    uvloop.run(main())


def client(port: int, connections: int, depth: int, seconds: float) -> None:
    import uvloop

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        counter = [0]
        protocols = []
        for _ in range(connections):
            _, protocol = await loop.create_connection(lambda: ClientProtocol(depth, counter),
                                                       "127.0.0.1", port)
            protocols.append(protocol)
        await asyncio.sleep(0.5)  # warm-up
        start, before = time.monotonic(), counter[0]
        await asyncio.sleep(seconds)
        elapsed, replies = time.monotonic() - start, counter[0] - before
        for protocol in protocols:
            protocol.running = False
            protocol.transport.close()
        return {"replies": replies, "seconds": elapsed}

    print(json.dumps(uvloop.run(main())))


# ----- the driver ------------------------------------------------------------------------------------


def meshproxy_config(plain: int, sniffed: int, upstream: int,
                     spins: dict[int, int] | None = None) -> dict[str, Any]:
    """Listeners ``plain`` and ``sniffed``, and one ``spin<us>`` per --calibrate cost (us -> port)."""
    def lst(name: str, port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": filters}]}

    tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "bench", "cluster": "mongod"}}
    mongo = {"name": "envoy.filters.network.mongo_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy",
        "stat_prefix": "bench"}}
    cluster = {"name": "mongod", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "mongod", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}}
    listeners = [lst("plain", plain, [tcp]), lst("sniffed", sniffed, [mongo, tcp])]
    for us, port in (spins or {}).items():
        spin = {"name": "mongo_bench.spin", "typed_config": {"@type": "type.googleapis.com/mongo_bench.Spin",
                                                             "us": us}}
        listeners.append(lst(f"spin{us}", port, [spin, tcp]))
    return {"static_resources": {"listeners": listeners, "clusters": [cluster]}}


def worker_cpu(proxy: tcp_bench.Started) -> float:
    pids = tcp_bench.child_pids(proxy.popen.pid)
    return sum(sum(worker_profile.cpu_times(p)) for p in pids)


def run_client(port: int, workload: str, seconds: float) -> dict[str, float]:
    connections, depth = WORKLOADS[workload]
    argv = [sys.executable, __file__, "--client", str(port), str(connections), str(depth), str(seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return json.loads(done.stdout)


def micro(rounds: int = 15, n: int = 2048) -> dict[str, float]:
    """The filter alone, in process: CPU microseconds per request + reply pair (best of ``rounds``).

    Process CPU time, not wall time, so that a busy machine taking the CPU away counts less. Each
    workload feeds the filter one read per request (P1) or reads of 16 pipelined requests (P16);
    ``decoding`` is the decoders alone on the same reads (``summaries``, what the filter calls),
    ``floor`` the least any per-message sniffer in Python does (see ``through_floor``), and
    ``full decoder`` the ``Message`` API (``feed`` + ``next_message``) for comparison."""
    from filters.mongo_proxy.codec import NEED_DATA, MongoDecoder
    from filters.mongo_proxy.config import MongoProxyConfig
    from filters.mongo_proxy.fastpath import REPLIES, REQUESTS
    from filters.mongo_proxy.filter import MongoProxyFilter, build
    from stats_shm import HeapStore

    class Worker:
        index, loop, stats, clusters = 0, None, HeapStore(), None

    class Callbacks:
        info = None

    f = build(MongoProxyConfig("bench"), Worker())()  # type: ignore[arg-type]
    assert isinstance(f, MongoProxyFilter)
    f.initialize(Callbacks())  # type: ignore[arg-type]
    requests = [op_msg(REQUEST_BODY, i, 0) for i in range(n)]
    replies = [op_msg(REPLY_BODY, 10_000 + i, i) for i in range(n)]
    reads = {
        "P1": (requests, replies),
        "P16": ([b"".join(requests[i:i + 16]) for i in range(0, n, 16)],
                [b"".join(replies[i:i + 16]) for i in range(0, n, 16)]),
    }

    def best_of(run: Callable[[], None]) -> float:
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
        return best / n * 1e6

    def through_filter(ins: list[bytes], outs: list[bytes]) -> None:
        for request, reply in zip(ins, outs, strict=True):
            f.on_data(request, False)
            f.on_write(reply, False)

    def through_decoders(ins: list[bytes], outs: list[bytes]) -> None:
        down = MongoDecoder(summaries=REQUESTS, count_documents=False)
        up = MongoDecoder(summaries=REPLIES)
        for request, reply in zip(ins, outs, strict=True):
            down.summaries(request)
            up.summaries(reply)

    def through_full_decoder(ins: list[bytes], outs: list[bytes]) -> None:
        decoder = MongoDecoder()
        for data in (*ins, *outs):
            decoder.feed(data)
            while decoder.next_message() is not NEED_DATA:
                pass

    # The floor of any per-message sniffer in Python: header unpack, command name, one counter, the
    # reply time into one histogram (requests matched through a dict); per read, stats batched.
    header = struct.Struct("<iiiiIBi").unpack_from
    store = HeapStore()
    floor_counters = {b"find": store.counter("floor.cmd.find.total")}
    floor_histogram = store.histogram("floor.cmd.find.reply_time_ms")
    floor_in_flight: dict[int, float] = {}
    clock = time.monotonic

    def floor_requests(data: bytes) -> None:
        pos, end, now, seen = 0, len(data), clock(), {}
        while pos < end:
            length, request_id, _, _, _, _, _ = header(data, pos)
            name = data[pos + 26 : data.find(0, pos + 26)]
            seen[name] = seen.get(name, 0) + 1
            floor_in_flight[request_id] = now
            pos += length
        for name, count in seen.items():
            floor_counters[name].inc(count)

    def floor_replies(data: bytes) -> None:
        pos, end, now, starts = 0, len(data), clock(), {}
        while pos < end:
            length, _, response_to, _, _, _, _ = header(data, pos)
            start = floor_in_flight.pop(response_to, None)
            if start is not None:
                starts[start] = starts.get(start, 0) + 1
            pos += length
        for start, count in starts.items():
            floor_histogram.record_n((now - start) * 1000.0, count)

    def through_floor(ins: list[bytes], outs: list[bytes]) -> None:
        for request, reply in zip(ins, outs, strict=True):
            floor_requests(request)
            floor_replies(reply)

    out: dict[str, float] = {}
    for workload, (ins, outs) in reads.items():
        out[f"{workload} filter us per request+reply"] = best_of(lambda i=ins, o=outs: through_filter(i, o))
        out[f"{workload} of which decoding"] = best_of(lambda i=ins, o=outs: through_decoders(i, o))
        out[f"{workload} floor (header, command, 1 counter, 1 histogram)"] = best_of(
            lambda i=ins, o=outs: through_floor(i, o))
    out["P1 full decoder (Message API)"] = best_of(lambda: through_full_decoder(requests, replies))
    return out


def profile(proxy: tcp_bench.Started, port: int, quick: bool) -> None:
    """py-spy the worker while each workload runs against the sniffed listener; print where time goes."""
    worker_profile.ensure_py_spy()
    workers = tcp_bench.child_pids(proxy.popen.pid)
    out_dir = REPO / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    for workload in WORKLOADS:
        outputs = [out_dir / f"mongo-profile-{workload}-worker{i}.txt" for i in range(len(workers))]
        cpu = worker_profile.sample_workers(workers, outputs, 4 if quick else 10,
                                            lambda seconds, w=workload: run_client(port, w, seconds))
        print(f"\n### the worker under {workload}, sniffed (stacks: bench/out/mongo-profile-{workload}-*)\n")
        print(f"worker CPU: {cpu.user:.0%} user + {cpu.system:.0%} system of one core")
        print(worker_profile.summarise([o for o in outputs if o.exists()], top=16), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s per workload and target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--micro", action="store_true", help="also time the filter alone, in process")
    parser.add_argument("--micro-only", action="store_true", help="only the in-process timing (no processes)")
    parser.add_argument("--profile", action="store_true", help="afterwards, py-spy the worker (sniffed)")
    parser.add_argument("--calibrate", type=lambda text: [int(us) for us in text.split(",")], default=[],
                        metavar="US[,US...]",
                        help="also measure a filter burning US microseconds of CPU per read, each way")
    parser.add_argument("--json", type=Path, help="write every sample to this file")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each round, wait up to S s for other load to drop under 25%%")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.quiet_wait = 1, 3.0, 0.0
    if args.micro_only:
        for name, value in micro().items():
            print(f"micro: {name}: {value:.1f} us")
        return 0
    with tempfile.TemporaryDirectory(prefix="mongo_bench.") as tmp:
        procs = tcp_bench.Processes(Path(tmp))
        try:
            return measure(procs, Path(tmp), args)
        finally:
            procs.stop_all()


def measure(procs: tcp_bench.Processes, workdir: Path, args: argparse.Namespace) -> int:
    upstream, plain, sniffed, *spin_ports = tcp_bench.free_ports(3 + len(args.calibrate))
    spins = dict(zip(args.calibrate, spin_ports, strict=True))
    procs.start("upstream", [sys.executable, __file__, "--serve", str(upstream)], cwd=REPO)
    config = workdir / "meshproxy.yaml"
    config.write_text(yaml.safe_dump(meshproxy_config(plain, sniffed, upstream, spins), sort_keys=False))
    argv = [sys.executable, "-m", "meshproxy", "-c", str(config), "--concurrency", "1", "-l", "warning",
            "--drain-time-s", "1", "--base-id", str(9500 + os.getpid() % 400)]
    if spins:
        (workdir / "mongo_bench_spin.py").write_text(SPIN_MODULE)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
        argv += ["--filter-module", "mongo_bench_spin"]
    proxy = procs.start("meshproxy", argv, cwd=REPO)
    deadline = time.monotonic() + 20
    while not all(map(tcp_bench.is_listening, (upstream, plain, sniffed, *spin_ports))):
        if time.monotonic() > deadline or proxy.popen.poll() is not None:
            print(proxy.log.read_text(), file=sys.stderr)
            return 1
        time.sleep(0.1)
    targets = {"plain": plain, "sniffed": sniffed, **{f"spin{us}": port for us, port in spins.items()}}
    samples: dict[tuple[str, str, str], list[float]] = {}
    for turn in range(args.rounds):
        busy = tcp_bench.wait_for_quiet(args.quiet_wait) if args.quiet_wait else tcp_bench.cpu_busy()
        print(f"round {turn + 1}: other load {busy:.0%} of the CPUs, load average {os.getloadavg()[0]:.1f}",
              flush=True)
        for workload in WORKLOADS:
            order = list(targets) if turn % 2 == 0 else list(reversed(targets))
            for target in order:
                cpu0 = worker_cpu(proxy)
                result = run_client(targets[target], workload, args.seconds)
                cpu = worker_cpu(proxy) - cpu0
                rps = result["replies"] / result["seconds"]
                cpu_us = cpu / max(1, result["replies"]) * 1e6
                samples.setdefault((workload, target, "rps"), []).append(rps)
                samples.setdefault((workload, target, "cpu_us"), []).append(cpu_us)
                print(f"round {turn + 1} {workload:>3} {target:>8}: {rps:9.0f} rq/s, {cpu_us:6.1f} us CPU/rq",
                      flush=True)
    print()
    print("| workload | plain rq/s | sniffed rq/s | sniffed/plain | plain CPU us/rq | sniffed CPU us/rq |")
    print("|---|---|---|---|---|---|")
    verdicts = []
    for workload in WORKLOADS:
        plain_rps, sniffed_rps = samples[(workload, "plain", "rps")], samples[(workload, "sniffed", "rps")]
        ratios = [s / p for p, s in zip(plain_rps, sniffed_rps, strict=True)]
        ratio = statistics.median(ratios)
        med = {key[1:]: statistics.median(v) for key, v in samples.items() if key[0] == workload}
        print(f"| {workload} | {med[('plain', 'rps')]:.0f} | {med[('sniffed', 'rps')]:.0f} | "
              f"**{ratio:.2f}x** (rounds {min(ratios):.2f}-{max(ratios):.2f}) | "
              f"{med[('plain', 'cpu_us')]:.1f} | {med[('sniffed', 'cpu_us')]:.1f} |")
        verdicts.append(f"{workload}: sniffer keeps {ratio:.0%} of tcp_proxy's throughput "
                        f"({'meets' if ratio >= 0.75 else 'MISSES'} the >= 75% target)")
    if spins:
        print()
        print("| workload | calibration filter (CPU per read, each way) | rq/s | its/plain | CPU us/rq |")
        print("|---|---|---|---|---|")
        for workload in WORKLOADS:
            plain_rps = samples[(workload, "plain", "rps")]
            for us in spins:
                rps = samples[(workload, f"spin{us}", "rps")]
                ratios = [s / p for p, s in zip(plain_rps, rps, strict=True)]
                cpu = statistics.median(samples[(workload, f"spin{us}", "cpu_us")])
                print(f"| {workload} | {us} us | {statistics.median(rps):.0f} | "
                      f"{statistics.median(ratios):.2f}x | {cpu:.1f} |")
    print()
    print("\n".join(verdicts))
    print(f"load average after: {os.getloadavg()[0]:.1f}, CPUs: {os.cpu_count()}")
    if args.micro:
        for name, value in micro().items():
            print(f"micro: {name}: {value:.1f} us")
    if args.json:
        args.json.write_text(json.dumps({" ".join(k): v for k, v in samples.items()}, indent=1))
    if args.profile:
        profile(proxy, sniffed, args.quick)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(main())
