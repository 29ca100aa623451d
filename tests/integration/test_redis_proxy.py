"""redis_proxy end to end: real ``redis-server`` processes on loopback, meshproxy, real clients.

Three redis-servers (no persistence) serve the module; one meshproxy (2 workers) has two
listeners over them, ``ring`` (RING_HASH, hash tags on) and ``maglev`` (MAGLEV). Where a key
must live is computed here from ``filters.hashing`` and ``commands.redis_key_hash`` over the
host keys ``127.0.0.1:<port>`` (what Envoy hashes) and checked by asking each redis-server
directly. Tests that kill servers or need other configs start their own.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from filters.hashing import Maglev, RingHash
from filters.redis_proxy.commands import redis_key_hash
from integration.harness import LOCALHOST, MeshProxy, bootstrap, free_port, listener, socket_address, wait_for
from stats_shm import Segment

REDIS_TYPE = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions"
EXAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "envoy-examples"
EXAMPLE = EXAMPLES / "redis-envoy.yaml"
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


class RedisServer:
    """One ``redis-server`` on 127.0.0.1 without persistence, stopped by its pid."""

    def __init__(self, port: int | None = None, *args: str) -> None:
        self.port = port or free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", LOCALHOST, "--save", "",
             "--appendonly", "no", *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        password = self.args[self.args.index("--requirepass") + 1] if "--requirepass" in self.args else None
        client = redis.Redis(port=self.port, password=password, protocol=2, socket_timeout=2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 10, f"redis-server on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, protocol=2, socket_timeout=5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def host_key(self) -> str:
        return f"{LOCALHOST}:{self.port}"


def redis_filter(cluster: str, stat_prefix: str, op_timeout: str = "2s", **fields: Any) -> dict[str, Any]:
    settings = {"op_timeout": op_timeout, **fields.pop("settings", {})}
    return {"name": "envoy.filters.network.redis_proxy",
            "typed_config": {"@type": REDIS_TYPE, "stat_prefix": stat_prefix, "settings": settings,
                             "prefix_routes": {"catch_all_route": {"cluster": cluster}}, **fields}}


def redis_cluster(name: str, servers: list[RedisServer], policy: str = "RING_HASH",
                  password: str | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": policy,
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": socket_address(s.port)}} for s in servers]}]},
    }
    if password is not None:
        cluster["typed_extension_protocol_options"] = {"envoy.filters.network.redis_proxy": {
            "@type": OPTIONS_TYPE, "auth_password": {"inline_string": password}}}
    return cluster


def start_proxy(workdir: Path, config: dict[str, Any], name: str) -> MeshProxy:
    return MeshProxy(workdir, config, concurrency=2, name=name).start()


def counters(proxy: MeshProxy) -> dict[str, int]:
    segment = Segment.attach(proxy.base_id, read_only=True)
    try:
        return segment.snapshot().counters
    finally:
        segment.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    started = [RedisServer() for _ in range(3)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def proxy(servers: list[RedisServer], tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[MeshProxy]:
    config = bootstrap(
        [listener("ring", 0, redis_filter("ring", "ring", settings={"enable_hashtagging": True})),
         listener("maglev", 0, redis_filter("maglev", "maglev"))],
        [redis_cluster("ring", servers), redis_cluster("maglev", servers, "MAGLEV")],
    )
    mesh = start_proxy(tmp_path_factory.mktemp("redis_proxy"), config, "redis")
    yield mesh
    mesh.kill()


@pytest.fixture
def flushed(servers: list[RedisServer]) -> list[RedisServer]:
    for server in servers:
        server.client().flushall()
    return servers


def client(proxy: MeshProxy, name: str = "ring", **options: Any) -> redis.Redis:
    options.setdefault("socket_timeout", 20)
    return redis.Redis(port=proxy.ports[name], **options)


@functools.cache
def _table(host_keys: tuple[str, ...], policy: str) -> RingHash | Maglev:
    hosts = [(key, 1) for key in host_keys]
    return RingHash(hosts) if policy == "RING_HASH" else Maglev(hosts)


def owner(servers: list[RedisServer], key: bytes, policy: str = "RING_HASH",
          hashtag: bool = False) -> RedisServer:
    """The server Envoy's placement gives ``key`` (hosts keyed ``ip:port``, as Envoy hashes them)."""
    table = _table(tuple(s.host_key for s in servers), policy)
    return servers[table.pick(redis_key_hash(key, hashtag))]


# ----- placement ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "policy"), [("ring", "RING_HASH"), ("maglev", "MAGLEV")])
def test_keys_land_where_the_hash_says_from_every_worker(proxy: MeshProxy, flushed: list[RedisServer],
                                                         name: str, policy: str) -> None:
    keys = [b"user:%d" % i for i in range(300)]
    for n in range(8):  # 8 connections: both workers serve some
        pipe = client(proxy, name, protocol=2).pipeline(transaction=False)
        for key in keys[n::8]:
            pipe.set(key, key)
        assert pipe.execute() == [True] * len(keys[n::8])
    homes = [owner(flushed, key, policy, hashtag=(name == "ring")) for key in keys]
    for server in flushed:
        found = server.client().mget(keys)
        assert found == [key if home is server else None for key, home in zip(keys, homes, strict=True)]
    assert all(homes.count(server) > 30 for server in flushed)  # every host got its share


def test_hash_tags_keep_related_keys_together(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    r = client(proxy)
    r.mset({"{order:7}.items": "3", "{order:7}.total": "42", "{order:7}.state": "paid"})
    home = owner(flushed, b"order:7")
    assert sorted(home.client().keys("*")) == [b"{order:7}.items", b"{order:7}.state", b"{order:7}.total"]


# ----- commands ----------------------------------------------------------------------------------------


def test_multi_key_commands_across_hosts(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    r = client(proxy)
    data = {f"mk{i}": f"v{i}" for i in range(40)}
    assert r.mset(data) is True
    assert {owner(flushed, k.encode(), hashtag=True).port for k in data} == {s.port for s in flushed}
    names = [*data, "missing"]
    assert r.mget(names) == [*(v.encode() for v in data.values()), None]
    assert r.exists(*names[:10], "missing", names[0]) == 11
    assert r.touch(*names[:5]) == 5
    assert r.delete(*names[:20], "missing") == 20
    assert r.unlink(*names[20:]) == 20
    assert sum(s.client().dbsize() for s in flushed) == 0


def test_pipeline_of_10000_commands(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    r = client(proxy)
    pipe = r.pipeline(transaction=False)
    for i in range(5000):
        pipe.set(f"p{i}", i)
        pipe.get(f"p{i}")
    results = pipe.execute()
    assert results[0::2] == [True] * 5000
    assert results[1::2] == [str(i).encode() for i in range(5000)]


def test_values_of_16_mib_are_intact(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    r = client(proxy)
    big = os.urandom(16 * MiB)
    assert r.set("big", big)
    assert r.get("big") == big
    assert r.mset({"big2": big[::-1], "small": "x"})
    assert r.mget(["big", "small", "big2"]) == [big, b"x", big[::-1]]
    assert owner(flushed, b"big").client().strlen("big") == 16 * MiB


def test_unsupported_commands_are_errors_and_the_connection_stays_usable(proxy: MeshProxy) -> None:
    r = client(proxy, single_connection_client=True)
    for command in (("KEYS", "*"), ("FLUSHALL",), ("SUBSCRIBE", "news"), ("CONFIG", "GET", "save")):
        with pytest.raises(redis.ResponseError, match=re.escape(f"unsupported command '{command[0]}'")):
            r.execute_command(*command)
        assert r.ping()
    with pytest.raises(redis.ResponseError, match="invalid request"):
        r.execute_command("GET")
    assert r.echo("still here") == b"still here"
    c = counters(proxy)
    assert c["redis.ring.splitter.unsupported_command"] >= 4 and c["redis.ring.splitter.invalid_request"] >= 1
    assert c["redis.ring.command.get.total"] > 0 and c["cluster.ring.upstream_rq_total"] > 0


def test_scan_returns_every_key_exactly_once(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    r = client(proxy)
    keys = {f"scan:{i}".encode() for i in range(1500)}
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, 1)
    pipe.execute()
    seen = list(r.scan_iter(count=100))
    assert len(seen) == len(keys) and set(seen) == keys
    assert set(r.scan_iter(match="scan:1??", count=1000)) == {f"scan:{i}".encode() for i in range(100, 200)}


def test_async_clients(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    async def worker(r: redis.asyncio.Redis, n: int) -> list[bytes | None]:
        for i in range(100):
            await r.set(f"a{n}:{i}", f"{n}-{i}")
        return await r.mget([f"a{n}:{i}" for i in range(100)])

    async def main() -> None:
        clients = [redis.asyncio.Redis(port=proxy.ports["ring"], socket_timeout=20) for _ in range(10)]
        try:
            results = await asyncio.gather(*(worker(clients[n % 10], n) for n in range(30)))
        finally:
            for c in clients:
                await c.aclose()
        for n, values in enumerate(results):
            assert values == [f"{n}-{i}".encode() for i in range(100)]

    asyncio.run(main())


# ----- transactions ------------------------------------------------------------------------------------


def test_single_host_transaction_works(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    r = client(proxy)
    pipe = r.pipeline(transaction=True)
    pipe.set("{acct:1}.balance", 100).decrby("{acct:1}.balance", 30).incrby("{acct:1}.spent", 30)
    assert pipe.execute() == [True, 70, 30]
    with r.pipeline() as pipe:  # optimistic locking: WATCH, read, MULTI, write, EXEC
        pipe.watch("{acct:1}.balance")
        balance = int(pipe.get("{acct:1}.balance"))
        pipe.multi()
        pipe.set("{acct:1}.balance", balance - 10)
        assert pipe.execute() == [True]
    assert r.get("{acct:1}.balance") == b"60"


def test_watch_detects_a_concurrent_write(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    r, other = client(proxy), client(proxy)
    r.set("w", 1)
    with r.pipeline() as pipe:
        pipe.watch("w")
        other.set("w", 2)
        pipe.multi()
        pipe.set("w", 3)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert r.get("w") == b"2"


def test_cross_host_transaction_is_refused(proxy: MeshProxy, flushed: list[RedisServer]) -> None:
    r = client(proxy)
    a = next(f"x{i}" for i in range(100) if owner(flushed, f"x{i}".encode()) is flushed[0])
    b = next(f"x{i}" for i in range(100) if owner(flushed, f"x{i}".encode()) is flushed[1])
    pipe = r.pipeline(transaction=True)
    pipe.set(a, 1).set(b, 2)
    with pytest.raises(redis.ResponseError, match="don't hash to the same slot"):
        pipe.execute()
    assert r.get(a) is None and r.get(b) is None  # nothing was applied
    assert r.set(a, 1)  # the connection is usable


# ----- auth, failures, the Envoy example -------------------------------------------------------------


def test_auth_on_both_sides(tmp_path: Path) -> None:
    server = RedisServer(None, "--requirepass", "upstream-pw")
    try:
        config = bootstrap(
            [listener("good", 0, redis_filter("good", "good",
                                               downstream_auth_password={"inline_string": "client-pw"})),
             listener("bad", 0, redis_filter("bad", "bad"))],
            [redis_cluster("good", [server], password="upstream-pw"),
             redis_cluster("bad", [server], password="wrong")],
        )
        mesh = start_proxy(tmp_path, config, "auth")
        try:
            no_retry = Retry(NoBackoff(), 0)  # redis-py retries failed handshakes with backoff
            with pytest.raises(redis.AuthenticationError):
                client(mesh, "good", retry=no_retry).get("k")
            with pytest.raises(redis.AuthenticationError):
                client(mesh, "good", password="nope", retry=no_retry).get("k")
            for protocol in (2, 3):
                r = client(mesh, "good", password="client-pw", protocol=protocol)
                assert r.set("k", "v") and r.get("k") == b"v"
            with pytest.raises(redis.ResponseError, match="upstream failure"):
                client(mesh, "bad").get("k")
            mesh.wait_log("refused (AUTH|HELLO)")
        finally:
            mesh.kill()
    finally:
        server.stop()


def test_killed_upstream_fails_only_its_keys_and_recovers(tmp_path: Path) -> None:
    pair = [RedisServer(), RedisServer()]
    try:
        mesh = start_proxy(tmp_path, bootstrap([listener("r", 0, redis_filter("r", "r"))],
                                                [redis_cluster("r", pair)]), "killed")
        try:
            r = client(mesh, "r", socket_timeout=5)
            keys = [f"k{i}" for i in range(60)]
            for key in keys:
                r.set(key, key)
            victim = pair[0]
            lost = {k for k in keys if owner(pair, k.encode()) is victim}
            assert 0 < len(lost) < len(keys)
            victim.kill()
            for key in keys:
                started = time.monotonic()
                if key in lost:
                    with pytest.raises(redis.ResponseError, match="upstream failure"):
                        r.get(key)
                    assert time.monotonic() - started < 1.0  # promptly, not after op_timeout
                else:
                    assert r.get(key) == key.encode()
            victim.start()  # same port, empty

            def recovered() -> bool:
                try:
                    return all(r.set(k, "again") for k in lost)
                except redis.ResponseError:
                    return False

            wait_for(recovered, 10, "the restarted upstream to serve again")
            assert all(victim.client().get(k) == b"again" for k in lost)
            assert all(r.get(k) == k.encode() for k in keys if k not in lost)
        finally:
            mesh.kill()
    finally:
        for server in pair:
            server.stop()


def test_envoy_redis_example_serves(tmp_path: Path, servers: list[RedisServer]) -> None:
    if not EXAMPLE.is_file():
        pytest.skip(f"no Envoy example at {EXAMPLE}")
    config = yaml.safe_load(EXAMPLE.read_text())
    config["static_resources"]["listeners"][0]["address"] = socket_address(0)
    endpoint = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    endpoint["endpoint"]["address"] = socket_address(servers[0].port)  # the docker-compose 'redis' service
    config["admin"]["address"] = socket_address(0)
    mesh = start_proxy(tmp_path, config, "example")
    try:
        r = redis.Redis(port=mesh.ports["redis_listener"], socket_timeout=10)
        assert r.set("example", "works") and r.get("example") == b"works"
        assert servers[0].client().get("example") == b"works"
    finally:
        mesh.kill()


def test_redis_benchmark_through_the_proxy_has_no_errors(proxy: MeshProxy,
                                                         flushed: list[RedisServer]) -> None:
    base = ["redis-benchmark", "-h", LOCALHOST, "-p", str(proxy.ports["ring"]), "-n", "20000", "-c", "20",
            "-P", "16", "-q"]
    # 10 keys spread over the 3 hosts (a real fan-out), whatever ports the servers got.
    candidates = [f"bench:{i}" for i in range(1000)]
    first = {}
    for k in candidates:
        first.setdefault(owner(flushed, k.encode(), hashtag=True).port, k)
    keys = [*first.values(), *[k for k in candidates if k not in first.values()][: 10 - len(first)]]
    assert len({owner(flushed, k.encode(), hashtag=True).port for k in keys}) == 3
    runs = [[*base, "-t", "get,set,mget,mset"], [*base, "MGET", *keys]]  # redis-benchmark has no -t mget
    names = [f"redis.ring.command.{cmd}.{what}" for cmd in ("get", "set", "mget", "mset")
             for what in ("total", "error")]
    before = counters(proxy)
    output = ""
    for argv in runs:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        output += result.stdout.replace("\r", "\n")
    assert "Error" not in output and "error" not in output, output[-2000:]
    finals = re.findall(r"^(SET|GET|MSET \(10 keys\)|MGET bench:.*?): ([\d.]+) requests per second",
                        output, re.M)
    assert len(finals) == 4, output[-2000:]
    after = counters(proxy)
    delta = {name.split(".", 3)[3]: after.get(name, 0) - before.get(name, 0) for name in names}
    assert delta["mget.total"] == delta["mset.total"] == delta["get.total"] == delta["set.total"] == 20000
    assert delta["get.error"] == delta["set.error"] == delta["mget.error"] == delta["mset.error"] == 0
