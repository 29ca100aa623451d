"""The redis_proxy filter driven with fake upstreams: real decoder, real hashing, real HeapStore.

A fake worker gives the filter a hand-advanced loop (``call_soon`` runs on ``loop.run()``,
timers fire on ``loop.advance``) and ``connect_upstream`` connections that record what is
written; tests answer as the Redis servers would, in any order across hosts. Placement is
checked against ``filters.hashing`` through the same cluster runtime the workers use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis
import pytest

from filters.api import ConnectionEvent
from filters.config_schema import ParseContext
from filters.redis_proxy import commands as cmds
from filters.redis_proxy import config as redis_config
from filters.redis_proxy.config import ConnPoolSettings, RedisProtocolOptions, RedisProxyConfig, Route
from filters.redis_proxy.filter import MAX_PENDING, RedisProxyFilter, build
from filters.redis_proxy.upstream import BACKOFF_BASE
from meshproxy.config.model import Cluster, LbPolicy
from stats_shm import HeapStore
from workers.cluster import ClusterRuntime

P = "redis.r."
PORTS = (7001, 7002, 7003)

# ----- fakes ---------------------------------------------------------------------------------------


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0
        self.soon: list[Callable[[], None]] = []
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        self.soon.append(lambda: callback(*args))

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def run(self) -> None:
        while self.soon:
            self.soon.pop(0)()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = sorted((t for t in self.timers if not t.cancelled and t.when <= self.now), key=lambda t: t.when)
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            timer.callback()
        self.run()


class FakeConn:
    """An upstream connection: records writes; the test answers through ``owner``."""

    def __init__(self, owner: Any, host: Any) -> None:
        self.owner, self.host = owner, host
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written += data

    def close(self, flush: bool = True) -> None:
        self.closed = True

    def commands(self) -> list[list[bytes]]:
        reader = hiredis.Reader()
        reader.feed(self.written)
        out = []
        while (command := reader.gets()) is not False:
            out.append(command)
        return out

    def reply(self, data: bytes) -> None:
        self.owner.on_upstream_data(data)


class FakeWorker:
    def __init__(self, n_hosts: int = 2, policy: LbPolicy = LbPolicy.RING_HASH, options: Any = ()) -> None:
        self.index = 0
        self.loop = FakeLoop()
        self.stats = HeapStore()
        cluster = Cluster(name="redis", lb_policy=policy, protocol_options=options)
        self.cluster = ClusterRuntime(cluster, self.stats, [("127.0.0.1", p, 1, 0) for p in PORTS[:n_hosts]])
        other = ClusterRuntime(Cluster(name="other", lb_policy=policy), self.stats,
                               [("127.0.0.2", 7009, 1, 0)])
        self.clusters = {"redis": self.cluster, "other": other}
        self.conns: dict[int, list[FakeConn]] = {}
        self.refuse: set[int] = set()
        self.connects = 0

    def connect_upstream(self, cluster: Any, host: Any, owner: Any, done: Callable[[Any, str], None]) -> Any:
        self.connects += 1

        def finish() -> None:
            if host.port in self.refuse:
                done(None, "connect_fail")
                return
            conn = FakeConn(owner, host)
            self.conns.setdefault(host.port, []).append(conn)
            done(conn, "")

        self.loop.call_soon(finish)
        return FakeTimer(0, finish)

    def conn(self, port: int) -> FakeConn:
        return self.conns[port][-1]


class Callbacks:
    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.out = b""
        self.closed = False
        self.read_disabled = 0
        self.info = type("Info", (), {"remote_address": ("127.0.0.1", 5000)})()

    def write(self, data: bytes, end_stream: bool = False) -> None:
        self.out += data

    def close(self, flush: bool = True) -> None:
        self.closed = True

    def read_disable(self, disable: bool) -> None:
        self.read_disabled += 1 if disable else -1

    def write_buffer_size(self) -> int:
        return 0

    def take(self) -> bytes:
        out, self.out = self.out, b""
        return out


class Proxy:
    """One redis_proxy config in one fake worker."""

    def __init__(self, worker: FakeWorker | None = None, **fields: Any) -> None:
        self.worker = worker or FakeWorker()
        settings = fields.pop("settings", ConnPoolSettings(op_timeout=1.0))
        fields.setdefault("catch_all_route", Route("redis"))
        self.factory = build(RedisProxyConfig("r", settings, **fields), self.worker)  # type: ignore[arg-type]
        self.loop = self.worker.loop

    def client(self) -> Client:
        f = self.factory()
        assert isinstance(f, RedisProxyFilter)
        callbacks = Callbacks(self.loop)
        f.initialize(callbacks)  # type: ignore[arg-type]
        f.on_new_connection()
        return Client(self, f, callbacks)

    def port_of(self, key: bytes, hashtag: bool = False) -> int:
        host = self.worker.cluster.choose_host(cmds.redis_key_hash(key, hashtag))
        return int(host.port)

    def keys_on(self, port: int, n: int, prefix: str = "k") -> list[bytes]:
        keys = (f"{prefix}{i}".encode() for i in range(10_000))
        found = [k for k in keys if self.port_of(k) == port]
        return found[:n]

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.worker.stats.snapshot().counters.items() if v}

    def gauges(self) -> dict[str, int]:
        return self.worker.stats.snapshot().gauges

    def served(self, port: int) -> list[list[bytes]]:
        return [c for conn in self.worker.conns.get(port, []) for c in conn.commands()]


class Client:
    def __init__(self, proxy: Proxy, f: RedisProxyFilter, callbacks: Callbacks) -> None:
        self.proxy, self.filter, self.callbacks = proxy, f, callbacks

    def send(self, *commands: list[bytes | str]) -> None:
        data = b"".join(hiredis.pack_command(tuple(c)) for c in commands)
        self.filter.on_data(data, False)
        self.proxy.loop.run()

    def replies(self) -> list[Any]:
        reader = hiredis.Reader()
        reader.feed(self.callbacks.take())
        out = []
        while (reply := reader.gets()) is not False:
            out.append(reply)
        return out

    def call(self, *args: bytes | str) -> list[Any]:
        self.send(list(args))
        return self.replies()


def answer(proxy: Proxy, port: int, data: bytes) -> None:
    proxy.worker.conn(port).reply(data)
    proxy.loop.run()


def text(reply: Any) -> str:
    """An error reply's message (hiredis gives ReplyError objects)."""
    assert isinstance(reply, hiredis.ReplyError), reply
    return str(reply)


# ----- simple commands and ordering -----------------------------------------------------------------


def test_simple_commands_go_to_the_hashed_host_and_replies_keep_request_order() -> None:
    proxy = Proxy()
    c = proxy.client()
    a, b = proxy.keys_on(7001, 1)[0], proxy.keys_on(7002, 1)[0]
    c.send([b"GET", a], [b"SET", b, b"v"], [b"get", a])
    assert proxy.served(7001) == [[b"GET", a], [b"get", a]]
    assert proxy.served(7002) == [[b"SET", b, b"v"]]
    answer(proxy, 7002, b"+OK\r\n")  # the second command's host answers first
    assert c.replies() == []  # held: the first reply is not in yet
    answer(proxy, 7001, b"$1\r\nx\r\n$-1\r\n")
    assert c.replies() == [b"x", b"OK", None]
    counters = proxy.counters()
    assert counters[P + "command.get.total"] == 2 and counters[P + "command.get.success"] == 2
    assert counters[P + "command.set.success"] == 1 and counters[P + "downstream_rq_total"] == 3
    assert counters["cluster.redis.upstream_rq_total"] == 3
    assert proxy.gauges()[P + "downstream_rq_active"] == 0
    assert proxy.gauges()["cluster.redis.upstream_rq_active"] == 0


def test_one_read_of_many_clients_is_one_write_per_host() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    clients = [proxy.client() for _ in range(3)]
    clients[0].send([b"GET", b"x"])  # connects
    answer(proxy, 7001, b"$-1\r\n")
    for i, c in enumerate(clients):
        data = b"".join(hiredis.pack_command((b"GET", b"k%d" % j)) for j in range(i, i + 10))
        c.filter.on_data(data, False)
    written = []
    conn = proxy.worker.conn(7001)
    conn.write = written.append  # type: ignore[method-assign]
    proxy.loop.run()
    assert len(written) == 1 and written[0].count(b"GET") == 30
    conn.reply(b"$1\r\nv\r\n" * 30)
    proxy.loop.run()
    assert all(c.replies()[-10:] == [b"v"] * 10 for c in clients)


def test_error_replies_are_relayed_verbatim_and_count_as_success() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c = proxy.client()
    c.send([b"INCR", b"k"])
    answer(proxy, 7001, b"-ERR value is not an integer or out of range\r\n")
    assert c.callbacks.out == b"-ERR value is not an integer or out of range\r\n"
    assert proxy.counters()[P + "command.incr.success"] == 1


def test_eval_hashes_its_first_key() -> None:
    proxy = Proxy()
    key = proxy.keys_on(7002, 1)[0]
    c = proxy.client()
    c.send([b"EVAL", b"return 1", b"1", key])
    assert proxy.served(7002) == [[b"EVAL", b"return 1", b"1", key]]
    answer(proxy, 7002, b":1\r\n")
    assert c.replies() == [1]
    assert text(c.call("EVALSHA", "abc", "0")[0]) == "wrong number of arguments for 'EVALSHA' command"
    assert proxy.counters()[P + "command.evalsha.error"] == 1


def test_hashtags_pin_keys_together() -> None:
    proxy = Proxy(settings=ConnPoolSettings(op_timeout=1.0, enable_hashtagging=True))
    keys = [b"{user1}.name", b"{user1}.mail", b"{user1}.age"]
    ports = {proxy.port_of(k, hashtag=True) for k in keys}
    assert len(ports) == 1
    c = proxy.client()
    c.send(*[[b"GET", k] for k in keys])
    assert len(proxy.served(ports.pop())) == 3


# ----- multi-key commands ---------------------------------------------------------------------------


def test_mget_is_one_mget_per_host_merged_in_key_order() -> None:
    proxy = Proxy()
    a1, a2 = proxy.keys_on(7001, 2)
    b1, b2 = proxy.keys_on(7002, 2)
    c = proxy.client()
    c.send([b"MGET", a1, b1, a2, b2])
    assert proxy.served(7001) == [[b"MGET", a1, a2]]
    assert proxy.served(7002) == [[b"MGET", b1, b2]]
    answer(proxy, 7002, b"*2\r\n$2\r\nb1\r\n$-1\r\n")
    answer(proxy, 7001, b"*2\r\n$2\r\na1\r\n$2\r\na2\r\n")
    assert c.replies() == [[b"a1", b"b1", b"a2", None]]
    assert proxy.counters()[P + "command.mget.success"] == 1


def test_mget_with_a_failed_host_gives_error_elements_for_its_keys() -> None:
    proxy = Proxy()
    a, b = proxy.keys_on(7001, 1)[0], proxy.keys_on(7002, 1)[0]
    c = proxy.client()
    c.send([b"MGET", a, b])
    answer(proxy, 7001, b"*1\r\n$1\r\nx\r\n")
    proxy.worker.conn(7002).owner.on_upstream_closed(None)
    proxy.loop.run()
    (reply,) = c.replies()
    assert reply[0] == b"x" and text(reply[1]) == "upstream failure"
    assert proxy.counters()[P + "command.mget.error"] == 1


def test_keys_on_one_host_are_sent_as_the_original_command() -> None:
    proxy = Proxy()
    keys = proxy.keys_on(7002, 3)
    c = proxy.client()
    c.send([b"DEL", *keys], [b"MSET", keys[0], b"1", keys[1], b"2"])
    assert proxy.served(7002) == [[b"DEL", *keys], [b"MSET", keys[0], b"1", keys[1], b"2"]]
    answer(proxy, 7002, b":2\r\n+OK\r\n")
    assert c.replies() == [2, b"OK"]


@pytest.mark.parametrize("command", [b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"])
def test_sum_commands_add_up_the_hosts(command: bytes) -> None:
    proxy = Proxy()
    a = proxy.keys_on(7001, 2)
    b = proxy.keys_on(7002, 1)
    c = proxy.client()
    c.send([command, a[0], b[0], a[1]])
    assert proxy.served(7001) == [[command, a[0], a[1]]] and proxy.served(7002) == [[command, b[0]]]
    answer(proxy, 7001, b":2\r\n")
    answer(proxy, 7002, b":1\r\n")
    assert c.replies() == [3]


def test_sum_and_mset_count_failed_keys() -> None:
    proxy = Proxy()
    a = proxy.keys_on(7001, 2)
    b = proxy.keys_on(7002, 1)
    c = proxy.client()
    c.send([b"DEL", a[0], a[1], b[0]], [b"MSET", a[0], b"1", b[0], b"2"])
    answer(proxy, 7001, b"-ERR boom\r\n+OK\r\n")
    answer(proxy, 7002, b":1\r\n-ERR full\r\n")
    r = c.replies()
    assert text(r[0]) == "finished with 2 error(s)" and text(r[1]) == "finished with 1 error(s)"
    counters = proxy.counters()
    assert counters[P + "command.del.error"] == 1 and counters[P + "command.mset.error"] == 1


def test_mset_answers_ok_when_every_host_did() -> None:
    proxy = Proxy()
    a, b = proxy.keys_on(7001, 1)[0], proxy.keys_on(7002, 1)[0]
    c = proxy.client()
    c.send([b"MSET", a, b"1", b, b"2"])
    assert proxy.served(7001) == [[b"MSET", a, b"1"]] and proxy.served(7002) == [[b"MSET", b, b"2"]]
    answer(proxy, 7001, b"+OK\r\n")
    answer(proxy, 7002, b"+OK\r\n")
    assert c.replies() == [b"OK"]
    assert text(c.call("MSET", "a", "1", "b")[0]) == "wrong number of arguments for 'MSET' command"


def test_mget_reply_of_the_wrong_shape_is_an_upstream_protocol_error() -> None:
    proxy = Proxy()
    a, b = proxy.keys_on(7001, 1)[0], proxy.keys_on(7002, 1)[0]
    c = proxy.client()
    c.send([b"MGET", a, b])
    answer(proxy, 7001, b":5\r\n")
    answer(proxy, 7002, b"*1\r\n:3\r\n")
    (reply,) = c.replies()
    assert [text(r) for r in reply] == ["upstream protocol error"] * 2


# ----- local commands, errors, auth ------------------------------------------------------------------


def test_local_commands_and_errors_keep_the_connection_usable() -> None:
    proxy = Proxy()
    c = proxy.client()
    c.send([b"PING"], [b"ECHO", b"hi"], [b"FLUSHALL"], [b"GET"], [b"CLIENT", b"SETINFO", b"x", b"y"],
           [b"TIME"], [b"PING", b"msg"])
    r = c.replies()
    assert r[:2] == [b"PONG", b"hi"]
    assert text(r[2]) == "unsupported command 'FLUSHALL'"
    assert text(r[3]) == "invalid request"
    assert text(r[4]) == "unsupported command 'CLIENT'"
    assert isinstance(r[5], list) and len(r[5]) == 2 and int(r[5][1]) < 1_000_000
    assert r[6] == b"msg"
    counters = proxy.counters()
    assert counters[P + "splitter.unsupported_command"] == 2 and counters[P + "splitter.invalid_request"] == 1
    assert not proxy.worker.conns  # nothing went upstream


def test_quit_answers_ok_then_closes_after_earlier_replies() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c = proxy.client()
    c.send([b"GET", b"a"], [b"QUIT"], [b"GET", b"b"])
    assert not c.callbacks.closed and proxy.served(7001) == [[b"GET", b"a"]]
    answer(proxy, 7001, b"$1\r\n1\r\n")
    assert c.replies() == [b"1", b"OK"] and c.callbacks.closed


def test_protocol_error_closes_the_connection() -> None:
    proxy = Proxy()
    c = proxy.client()
    c.filter.on_data(b"*1\r\n$4\r\nPING\r\n*1\r\n+bad\r\n", False)
    proxy.loop.run()
    assert c.callbacks.closed and c.replies() == [b"PONG"]
    assert proxy.counters()[P + "downstream_cx_protocol_error"] == 1


def test_downstream_auth_password() -> None:
    proxy = Proxy(downstream_auth_passwords=(b"s3cret", b"other"))
    c = proxy.client()
    r = c.call("GET", "k")
    assert text(r[0]) == "NOAUTH Authentication required."
    assert text(c.call("PING")[0]) == "NOAUTH Authentication required."
    assert text(c.call("AUTH", "nope")[0]) == "ERR invalid password"
    assert c.call("AUTH", "other") == [b"OK"]
    assert text(c.call("AUTH", "nope")[0]) == "ERR invalid password"
    assert c.call("PING") == [b"PONG"]  # a failed AUTH does not revoke the grant
    assert c.call("AUTH", "default", "s3cret") == [b"OK"]


def test_downstream_auth_username() -> None:
    proxy = Proxy(downstream_auth_passwords=(b"pw",), downstream_auth_username=b"app")
    c = proxy.client()
    assert text(c.call("AUTH", "bob", "nope")[0]) == "WRONGPASS invalid username-password pair"
    assert text(c.call("AUTH", "bob", "pw")[0]) == "WRONGPASS invalid username-password pair"
    assert c.call("AUTH", "app", "pw") == [b"OK"]
    assert c.call("PING") == [b"PONG"]
    assert Proxy(downstream_auth_passwords=(b"pw",), downstream_auth_username=b"app").client().call(
        "AUTH", "pw") == [b"OK"]  # as Envoy: a password alone is checked against the passwords


def test_auth_without_configured_password() -> None:
    c = Proxy().client()
    assert text(c.call("AUTH", "x")[0]) == "ERR Client sent AUTH, but no password is set"
    assert text(c.call("AUTH", "u", "x")[0]) == "ERR Client sent AUTH, but no username-password pair is set"


# ----- upstream connections -------------------------------------------------------------------------


def test_upstream_auth_is_sent_first_and_its_reply_consumed() -> None:
    options = (("envoy.filters.network.redis_proxy", RedisProtocolOptions(b"pw", b"user")),)
    proxy = Proxy(FakeWorker(n_hosts=1, options=options))
    c = proxy.client()
    c.send([b"GET", b"k"])
    assert proxy.served(7001) == [[b"AUTH", b"user", b"pw"], [b"GET", b"k"]]
    answer(proxy, 7001, b"+OK\r\n$1\r\nv\r\n")
    assert c.replies() == [b"v"]


def test_refused_upstream_auth_fails_the_pending_commands() -> None:
    options = (("envoy.filters.network.redis_proxy", RedisProtocolOptions(b"bad")),)
    proxy = Proxy(FakeWorker(n_hosts=1, options=options))
    c = proxy.client()
    c.send([b"GET", b"k"])
    answer(proxy, 7001, b"-WRONGPASS invalid username-password pair\r\n-NOAUTH Authentication required.\r\n")
    assert text(c.replies()[0]) == "upstream failure"
    assert proxy.worker.conn(7001).closed


def test_op_timeout_fails_pending_and_counts() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1), settings=ConnPoolSettings(op_timeout=0.5))
    c = proxy.client()
    c.send([b"GET", b"a"], [b"GET", b"b"])
    proxy.loop.advance(0.3)
    answer(proxy, 7001, b"$1\r\n1\r\n")  # progress re-arms the timer
    proxy.loop.advance(0.3)
    assert c.replies() == [b"1"]
    proxy.loop.advance(0.3)
    assert [text(r) for r in c.replies()] == ["upstream failure"]
    assert proxy.worker.conn(7001).closed
    counters = proxy.counters()
    assert counters["cluster.redis.upstream_rq_timeout"] == 1 and counters[P + "command.get.error"] == 1
    c.send([b"GET", b"c"])  # reconnects at once: a timeout is not a connect failure
    assert len(proxy.worker.conns[7001]) == 2


def test_lost_upstream_fails_exactly_its_commands_then_backs_off_and_recovers() -> None:
    proxy = Proxy()
    c = proxy.client()
    a, b = proxy.keys_on(7001, 1)[0], proxy.keys_on(7002, 1)[0]
    c.send([b"GET", a], [b"GET", b])
    conn = proxy.worker.conn(7002)
    proxy.worker.refuse.add(7002)
    conn.owner.on_upstream_closed(ConnectionResetError())
    proxy.loop.run()
    answer(proxy, 7001, b"$1\r\nA\r\n")
    r = c.replies()
    assert r[0] == b"A" and text(r[1]) == "upstream failure"
    c.send([b"GET", b])  # reconnect attempt: refused -> backoff starts
    assert text(c.replies()[0]) == "upstream failure"
    connects = proxy.worker.connects
    c.send([b"GET", b])  # fails fast during the backoff, no new attempt
    assert text(c.replies()[0]) == "upstream failure" and proxy.worker.connects == connects
    c.send([b"GET", a])  # the other host is unaffected
    answer(proxy, 7001, b"$1\r\nA\r\n")
    assert c.replies() == [b"A"]
    proxy.worker.refuse.clear()
    proxy.loop.advance(BACKOFF_BASE * 1.01)
    c.send([b"GET", b])
    answer(proxy, 7002, b"$1\r\nB\r\n")
    assert c.replies() == [b"B"]


def test_unexpected_upstream_reply_is_a_protocol_error() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c = proxy.client()
    c.send([b"GET", b"a"])
    answer(proxy, 7001, b"$1\r\n1\r\n+extra\r\n")
    assert c.replies() == [b"1"]
    assert proxy.counters()["cluster.redis.upstream_cx_protocol_error"] == 1
    c.send([b"GET", b"a"])
    answer(proxy, 7001, b"%bad\r\n")
    assert text(c.replies()[0]) == "upstream protocol error"


def test_many_pending_commands_stop_reading_until_half_are_answered() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c = proxy.client()
    total = MAX_PENDING + 100
    c.send(*[[b"GET", b"k%d" % i] for i in range(total)])
    assert c.callbacks.read_disabled == 1
    assert len(proxy.served(7001)) == MAX_PENDING
    answer(proxy, 7001, b"$1\r\nv\r\n" * (MAX_PENDING // 2))
    assert c.callbacks.read_disabled == 0
    assert len(proxy.served(7001)) == total  # the rest left the decoder once resumed
    answer(proxy, 7001, b"$1\r\nv\r\n" * (total - MAX_PENDING // 2))
    assert len(c.replies()) == total


def test_closed_client_drops_its_late_replies() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c1, c2 = proxy.client(), proxy.client()
    c1.send([b"GET", b"a"])
    c2.send([b"GET", b"b"])
    c1.filter.on_event(ConnectionEvent.REMOTE_CLOSE)
    answer(proxy, 7001, b"$1\r\n1\r\n$1\r\n2\r\n")
    assert c1.callbacks.out == b"" and c2.replies() == [b"2"]
    assert proxy.gauges()[P + "downstream_cx_active"] == 1


def test_half_closed_client_gets_its_replies_then_is_closed() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c = proxy.client()
    c.filter.on_data(hiredis.pack_command((b"GET", b"a")), True)
    proxy.loop.run()
    assert not c.callbacks.closed
    answer(proxy, 7001, b"$1\r\n1\r\n")
    assert c.replies() == [b"1"] and c.callbacks.closed


# ----- SCAN -------------------------------------------------------------------------------------------


def test_scan_walks_every_host_with_a_composite_cursor() -> None:
    proxy = Proxy(FakeWorker(n_hosts=3))
    c = proxy.client()
    assert c.call("SCAN", "0", "MATCH", "k*", "COUNT", "5") == []
    assert proxy.served(7001) == [[b"SCAN", b"0", b"MATCH", b"k*", b"COUNT", b"5"]]
    answer(proxy, 7001, b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\na\r\n")
    assert c.replies() == [[b"51", [b"a"]]]  # 17 * 3 + 0
    c.send([b"SCAN", b"51"])
    assert proxy.served(7001)[-1] == [b"SCAN", b"17"]
    answer(proxy, 7001, b"*2\r\n$1\r\n0\r\n*0\r\n")
    assert c.replies() == [[b"1", []]]  # host 0 done: host 1 next
    c.send([b"SCAN", b"1"])
    assert proxy.served(7002) == [[b"SCAN", b"0"]]
    answer(proxy, 7002, b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nb\r\n")
    assert c.replies() == [[b"2", [b"b"]]]
    c.send([b"SCAN", b"2"])
    answer(proxy, 7003, b"*2\r\n$1\r\n0\r\n*0\r\n")
    assert c.replies() == [[b"0", []]]  # the last host done: the iteration is over
    assert text(c.call("SCAN", "x")[0]) == "ERR invalid cursor"


# ----- transactions ------------------------------------------------------------------------------------


def test_single_host_transaction_uses_a_dedicated_connection() -> None:
    proxy = Proxy()
    a = proxy.keys_on(7001, 2)
    c, other = proxy.client(), proxy.client()
    assert c.call("MULTI") == [b"OK"]
    c.send([b"SET", a[0], b"1"], [b"INCR", a[1]])
    other.send([b"GET", a[0]])
    dedicated, shared = proxy.worker.conns[7001]  # the transaction connected first
    assert shared.commands() == [[b"GET", a[0]]]
    assert dedicated.commands() == [[b"MULTI"], [b"SET", a[0], b"1"], [b"INCR", a[1]]]
    dedicated.reply(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n")
    c.send([b"EXEC"])
    dedicated.reply(b"*2\r\n+OK\r\n:1\r\n")
    proxy.loop.run()
    assert c.replies() == [b"QUEUED", b"QUEUED", [b"OK", 1]]
    c.send([b"MULTI"], [b"GET", a[1]])  # the next transaction reuses the idle connection
    assert len(proxy.worker.conns[7001]) == 2 and dedicated.commands()[-2:] == [[b"MULTI"], [b"GET", a[1]]]


def test_cross_host_transaction_is_refused_and_aborted() -> None:
    proxy = Proxy()
    a, b = proxy.keys_on(7001, 1)[0], proxy.keys_on(7002, 1)[0]
    c = proxy.client()
    c.send([b"MULTI"], [b"SET", a, b"1"], [b"SET", b, b"2"], [b"MGET", a, b], [b"EXEC"])
    dedicated = proxy.worker.conn(7001)
    assert dedicated.commands() == [[b"MULTI"], [b"SET", a, b"1"], [b"DISCARD"]]
    dedicated.reply(b"+OK\r\n+QUEUED\r\n+OK\r\n")
    proxy.loop.run()
    r = c.replies()
    assert r[0] == b"OK" and r[1] == b"QUEUED"
    assert text(r[2]) == text(r[3]) == "CROSSSLOT Keys in request don't hash to the same slot"
    assert text(r[4]) == "EXECABORT Transaction discarded because of previous errors."
    assert 7002 not in proxy.worker.conns
    c.send([b"GET", b])  # back to normal routing
    assert proxy.served(7002) == [[b"GET", b]]


def test_transaction_edge_cases() -> None:
    proxy = Proxy()
    c = proxy.client()
    assert text(c.call("EXEC")[0]) == "EXEC without MULTI"
    assert text(c.call("DISCARD")[0]) == "DISCARD without MULTI"
    assert c.call("MULTI") == [b"OK"]
    assert text(c.call("MULTI")[0]) == "MULTI calls can not be nested"
    assert c.call("EXEC") == [[]]
    assert c.call("UNWATCH") == [b"OK"]
    c.send([b"MULTI"], [b"SCAN", b"0"], [b"DISCARD"])
    r = c.replies()
    assert text(r[1]) == "'SCAN' command is not supported within transaction" and r[2] == b"OK"
    assert c.filter.tx is None and c.filter.plain


def test_watch_pins_the_host_and_multi_follows_it() -> None:
    proxy = Proxy()
    a = proxy.keys_on(7002, 2)
    b = proxy.keys_on(7001, 1)[0]
    c = proxy.client()
    c.send([b"WATCH", a[0]], [b"GET", a[0]], [b"GET", b], [b"MULTI"], [b"SET", a[0], b"v"], [b"EXEC"])
    dedicated = proxy.worker.conn(7002)
    assert dedicated.commands() == [[b"WATCH", a[0]], [b"GET", a[0]], [b"MULTI"], [b"SET", a[0], b"v"],
                                    [b"EXEC"]]
    assert proxy.served(7001) == [[b"GET", b]]  # another host's key goes the normal way
    answer(proxy, 7001, b"$1\r\nb\r\n")
    dedicated.reply(b"+OK\r\n$1\r\n1\r\n+OK\r\n+QUEUED\r\n*-1\r\n")
    proxy.loop.run()
    assert c.replies() == [b"OK", b"1", b"b", b"OK", b"QUEUED", None]
    assert text(c.call("WATCH", a[0], b)[0]) == "CROSSSLOT Keys in request don't hash to the same slot"


def test_client_leaving_mid_transaction_closes_the_dedicated_connection() -> None:
    proxy = Proxy()
    a = proxy.keys_on(7001, 1)[0]
    c = proxy.client()
    c.send([b"MULTI"], [b"SET", a, b"1"])
    c.filter.on_event(ConnectionEvent.REMOTE_CLOSE)
    assert proxy.worker.conn(7001).closed


# ----- routes ------------------------------------------------------------------------------------------


def test_prefix_routes_longest_match_remove_prefix_and_no_route() -> None:
    proxy = Proxy(routes=(Route("other", "user:"), Route("redis", "user:admin:", remove_prefix=True)),
                  catch_all_route=None)
    c = proxy.client()
    c.send([b"GET", b"user:1"], [b"GET", b"user:admin:x"], [b"GET", b"nothing"])
    assert [cmd for conn in proxy.worker.conns[7009] for cmd in conn.commands()] == [[b"GET", b"user:1"]]
    port = proxy.port_of(b"x")
    assert proxy.served(port) == [[b"GET", b"x"]]
    r = c.replies()
    assert len(r) == 0
    answer(proxy, 7009, b"$1\r\n1\r\n")
    answer(proxy, port, b"$1\r\n2\r\n")
    r = c.replies()
    assert r[:2] == [b"1", b"2"] and text(r[2]) == "no upstream host"


def test_case_insensitive_prefix_routes() -> None:
    proxy = Proxy(routes=(Route("other", "AB"),), case_insensitive=True)
    c = proxy.client()
    c.send([b"GET", b"abc"], [b"GET", b"xbc"])
    assert [cmd for conn in proxy.worker.conns[7009] for cmd in conn.commands()] == [[b"GET", b"abc"]]


def test_mget_across_clusters_by_prefix() -> None:
    proxy = Proxy(routes=(Route("other", "o:", remove_prefix=True),))
    key = proxy.keys_on(7001, 1)[0]
    c = proxy.client()
    c.send([b"MGET", b"o:x", key])
    assert proxy.worker.conn(7009).commands() == [[b"MGET", b"x"]]
    assert proxy.served(7001) == [[b"MGET", key]]
    answer(proxy, 7001, b"*1\r\n$1\r\nk\r\n")
    answer(proxy, 7009, b"*1\r\n$1\r\no\r\n")
    assert c.replies() == [[b"o", b"k"]]


# ----- redirection, command stats, batching ------------------------------------------------------------


def test_moved_and_ask_are_followed_once_when_enabled() -> None:
    settings = ConnPoolSettings(op_timeout=1.0, enable_redirection=True, enable_command_stats=True)
    proxy = Proxy(settings=settings)
    a = proxy.keys_on(7001, 1)[0]
    c = proxy.client()
    c.send([b"GET", a])
    answer(proxy, 7001, b"-MOVED 3999 127.0.0.1:7002\r\n")
    assert proxy.served(7002) == [[b"GET", a]]
    answer(proxy, 7002, b"-ASK 3999 127.0.0.9:7777\r\n")  # only one redirection
    assert text(c.replies()[0]) == "ASK 3999 127.0.0.9:7777"
    c.send([b"GET", a])
    answer(proxy, 7001, b"-ASK 3999 127.0.0.9:7777\r\n")
    assert proxy.served(7777) == [[b"ASKING"], [b"GET", a]]
    answer(proxy, 7777, b"+OK\r\n$1\r\nz\r\n")
    assert c.replies() == [b"z"]
    assert proxy.counters()["cluster.redis.upstream_commands.get.total"] == 2


def test_redirection_is_passed_through_when_disabled() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c = proxy.client()
    c.send([b"GET", b"a"])
    answer(proxy, 7001, b"-MOVED 1 127.0.0.1:7002\r\n")
    assert text(c.replies()[0]) == "MOVED 1 127.0.0.1:7002"


def test_max_buffer_size_before_flush_batches_until_size_or_timer() -> None:
    settings = ConnPoolSettings(op_timeout=1.0, max_buffer_size_before_flush=64, buffer_flush_timeout=0.003)
    proxy = Proxy(FakeWorker(n_hosts=1), settings=settings)
    c = proxy.client()
    c.send([b"PING"])
    c.send([b"GET", b"a"])  # connect
    c.send([b"GET", b"b"])
    conn = proxy.worker.conn(7001)
    assert conn.commands() == [[b"GET", b"a"]]  # flushed on connect; b waits for size or timer
    proxy.loop.advance(0.004)
    assert conn.commands() == [[b"GET", b"a"], [b"GET", b"b"]]
    c.send(*[[b"GET", b"k%d" % i] for i in range(4)])  # 4 x 22 bytes >= 64
    assert len(conn.commands()) == 6


def test_host_set_change_reroutes_by_the_new_ring_and_closes_removed_hosts() -> None:
    proxy = Proxy(FakeWorker(n_hosts=3))
    key = proxy.keys_on(7003, 1)[0]
    c = proxy.client()
    c.send([b"GET", key])
    proxy.worker.cluster.update_hosts([("127.0.0.1", 7001, 1, 0), ("127.0.0.1", 7002, 1, 0)])
    c.send([b"GET", key])  # the cached route is dropped with the old ring
    assert proxy.worker.conn(7003).closed
    assert proxy.served(proxy.port_of(key)) == [[b"GET", key]]
    r = c.replies()
    assert text(r[0]) == "upstream failure"


def test_stats_names_follow_envoy() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1), latency_in_micros=True)
    c = proxy.client()
    c.send([b"GET", b"a"])
    answer(proxy, 7001, b"$1\r\n1\r\n")
    snap = proxy.worker.stats.snapshot()
    assert snap.histograms[P + "command.get.latency"].unit.name == "MICROSECONDS"
    assert snap.counters[P + "downstream_cx_total"] == 1
    assert snap.counters[P + "downstream_cx_rx_bytes_total"] > 0
    assert snap.counters[P + "downstream_cx_tx_bytes_total"] == 7
    assert snap.gauges[P + "downstream_cx_active"] == 1


# ----- config ------------------------------------------------------------------------------------------


def parse(typed: dict[str, Any]) -> tuple[RedisProxyConfig | None, list[str]]:
    ctx = ParseContext().at("f")
    return redis_config.parse(typed, ctx), ctx.errors


def test_config_compiles_settings_routes_and_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("REDIS_PW", "from-env")
    secret = tmp_path / "pw"
    secret.write_bytes(b"from-file")
    cfg, errors = parse({
        "stat_prefix": "r",
        "settings": {"op_timeout": "0.25s", "enable_hashtagging": True, "max_buffer_size_before_flush": 1024,
                     "read_policy": "prefer_replica"},
        "prefix_routes": {"routes": [{"prefix": "a:", "cluster": "c1", "remove_prefix": True}],
                          "catch_all_route": {"cluster": "c2"}, "case_insensitive": True},
        "downstream_auth_password": {"inline_string": "one"},
        "downstream_auth_passwords": [{"environment_variable": "REDIS_PW"}, {"filename": str(secret)},
                                      {"inline_bytes": "dHdv"}],
        "downstream_auth_username": {"inline_string": "app"},
        "custom_commands": ["MY.CMD"],
        "latency_in_micros": True,
    })
    assert errors == [] and cfg is not None
    assert cfg.settings.op_timeout == 0.25 and cfg.settings.buffer_flush_timeout == 0.003
    assert cfg.settings.read_policy.name == "PREFER_REPLICA"
    assert cfg.downstream_auth_passwords == (b"one", b"from-env", b"from-file", b"two")
    assert cfg.downstream_auth_username == b"app" and cfg.custom_commands == ("my.cmd",)
    assert cfg.routes == (Route("c1", "a:", True),) and cfg.catch_all_route == Route("c2")
    assert cfg.cluster_names() == ("c2", "c1")


@pytest.mark.parametrize(("typed", "path", "message"), [
    ({"stat_prefix": "r", "prefix_routes": {"catch_all_route": {"cluster": "c"}}}, "f",
     "missing required field 'settings'"),
    ({"stat_prefix": "r", "settings": {}}, "f.settings", "missing required field 'op_timeout'"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "0s"}}, "f.settings.op_timeout", "> 0s"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "1s", "read_policy": "REPLICA"}},
     "f.settings.read_policy", "REPLICA is a valid Envoy value but not supported"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "1s", "dns_cache_config": {}}},
     "f.settings.dns_cache_config", "not supported by meshproxy"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "1s"}, "prefix_routes": {"catch_all_cluster": "c"}},
     "f.prefix_routes.catch_all_cluster", "removed in v3: use catch_all_route"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "1s"}, "prefix_routes": {
        "routes": [{"prefix": "a", "cluster": "c"}, {"prefix": "A", "cluster": "d"}],
        "case_insensitive": True}},
     "f.prefix_routes.routes[1]", "prefix 'A' already exists"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "1s"}, "faults": []}, "f.faults", "not supported"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "1s"},
      "downstream_auth_passwords": [{"environment_variable": "NO_SUCH_VARIABLE_HERE"}]},
     "f.downstream_auth_passwords[0].environment_variable", "is not set"),
    ({"stat_prefix": "r", "settings": {"op_timeout": "1s"}, "downstream_auth_password": {}},
     "f.downstream_auth_password", "one of"),
])
def test_config_errors_name_the_field(typed: dict[str, Any], path: str, message: str) -> None:
    cfg, errors = parse(typed)
    assert cfg is None
    assert any(e.startswith(f"{path}: ") and message in e for e in errors), errors


def test_protocol_options() -> None:
    ctx = ParseContext().at("o")
    options = redis_config.parse_protocol_options(
        {"auth_password": {"inline_string": "pw"}, "auth_username": {"inline_string": "u"}}, ctx)
    assert options == RedisProtocolOptions(b"pw", b"u") and ctx.errors == []
    assert redis_config.parse_protocol_options({"auth_username": {"inline_string": "u"}}, ctx) is None
    assert redis_config.parse_protocol_options({"credentials": []}, ctx) is None
    assert any("auth_username needs an auth_password" in e for e in ctx.errors)
    assert any("'credentials' is a valid Envoy field but not supported" in e for e in ctx.errors)


def test_hello_switches_to_resp3_pools() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c = proxy.client()
    c.send([b"HELLO", b"3"])
    assert c.callbacks.take().startswith(b"%7\r\n$6\r\nserver\r\n")
    c.send([b"GET", b"k"])
    assert proxy.served(7001) == [[b"HELLO", b"3"], [b"GET", b"k"]]
    answer(proxy, 7001, b"%1\r\n+proto\r\n:3\r\n_\r\n")
    assert c.callbacks.take() == b"_\r\n"  # RESP3 null relayed to the RESP3 client
    plain = proxy.client()
    plain.send([b"GET", b"k"])  # a RESP2 client gets its own RESP2 connection
    assert len(proxy.worker.conns[7001]) == 2 and proxy.worker.conns[7001][1].commands() == [[b"GET", b"k"]]
    assert text(c.call("HELLO", "4")[0]) == "NOPROTO unsupported protocol version"
    assert c.call("HELLO", "2")[0][:2] == [b"server", b"redis"]


def test_hello_with_auth() -> None:
    proxy = Proxy(downstream_auth_passwords=(b"pw",))
    c = proxy.client()
    assert text(c.call("HELLO", "3")[0]).startswith("NOAUTH HELLO must be called")
    wrong = c.call("HELLO", "3", "AUTH", "default", "bad")[0]
    assert text(wrong) == "WRONGPASS invalid username-password pair"
    c.send([b"HELLO", b"3", b"AUTH", b"default", b"pw", b"SETNAME", b"me"])
    assert c.callbacks.take().startswith(b"%7\r\n") and c.filter.allowed


def test_decoder_keeps_the_bytes_of_canonical_commands() -> None:
    """``RequestDecoder.next_with_frame``: the fast path forwards these bytes as they came."""
    from filters.redis_proxy.codec import RequestDecoder
    from filters.redis_proxy.resp import NEED_DATA

    decoder = RequestDecoder(keep_frames=True)
    get = hiredis.pack_command((b"GET", b"k"))
    big = hiredis.pack_command((b"SET", b"k", b"v" * 100))
    decoder.feed(get + b"PING\r\n" + big[:20])
    assert decoder.next_with_frame() == ([b"GET", b"k"], get)
    assert decoder.next_with_frame() == ([b"PING"], None)  # inline: no frame to forward
    assert decoder.next_with_frame() is NEED_DATA
    decoder.feed(big[20:])
    assert decoder.next_with_frame() == ([b"SET", b"k", b"v" * 100], None)  # it spanned reads
    assert decoder.next_with_frame() is NEED_DATA


# ----- batching, key cache, stats shortcuts (the speed work of issue 5) ------------------------------


def test_interleaved_clients_one_write_per_host_and_per_client_in_each_clients_order() -> None:
    """Pipelines of several clients over two hosts: each host gets one write per pass and each
    client one write of its replies, in its own request order, however the hosts answer."""
    proxy = Proxy()
    on_1, on_2 = proxy.keys_on(7001, 6), proxy.keys_on(7002, 6)
    warm = proxy.client()
    warm.send([b"GET", on_1[0]], [b"GET", on_2[0]])  # connects both hosts
    answer(proxy, 7001, b"$-1\r\n")
    answer(proxy, 7002, b"$-1\r\n")
    clients = [proxy.client() for _ in range(3)]
    downstream: list[list[bytes]] = [[] for _ in clients]
    for c, sink in zip(clients, downstream, strict=True):
        c.callbacks.write = lambda data, end_stream=False, sink=sink: sink.append(data)  # type: ignore[method-assign]
    upstream: dict[int, list[bytes]] = {7001: [], 7002: []}
    for port, written in upstream.items():
        proxy.worker.conn(port).write = written.append  # type: ignore[method-assign]
    sent: list[list[bytes]] = []
    for i, c in enumerate(clients):
        keys = [on_1[i], on_2[i], on_2[i + 3], on_1[i + 3]]  # alternating hosts: several batches
        commands = [[b"GET", k] for k in keys]
        commands.insert(2, [b"PING"])  # answered here, between upstream replies
        sent.append([k for k in keys])
        c.filter.on_data(b"".join(hiredis.pack_command(tuple(cmd)) for cmd in commands), False)
    proxy.loop.run()
    assert [len(upstream[7001]), len(upstream[7002])] == [1, 1]
    for port in (7002, 7001):  # the second host answers first; values name their keys
        reader = hiredis.Reader()
        reader.feed(upstream[port][0])
        keys = []
        while (command := reader.gets()) is not False:
            keys.append(command[1])
        assert keys == [k for ks in sent for k in ks if proxy.port_of(k) == port]  # clients' order kept
        proxy.worker.conn(port).reply(b"".join(b"$%d\r\n%b\r\n" % (len(k), k) for k in keys))
    proxy.loop.run()
    for keys, writes in zip(sent, downstream, strict=True):
        assert len(writes) == 1
        reader = hiredis.Reader()
        reader.feed(writes[0])
        replies = []
        while (reply := reader.gets()) is not False:
            replies.append(reply)
        assert replies == [keys[0], keys[1], b"PONG", keys[2], keys[3]]
    assert proxy.gauges()[P + "downstream_rq_active"] == 0


def test_commands_after_quit_in_the_same_read_are_not_counted() -> None:
    proxy = Proxy(FakeWorker(n_hosts=1))
    c = proxy.client()
    c.send([b"GET", b"a"], [b"QUIT"], [b"GET", b"b"], [b"GET", b"c"])
    assert proxy.served(7001) == [[b"GET", b"a"]]
    assert proxy.counters()[P + "downstream_rq_total"] == 2
    answer(proxy, 7001, b"$1\r\nx\r\n")
    assert c.replies() == [b"x", b"OK"] and c.callbacks.closed
    assert proxy.gauges()[P + "downstream_rq_active"] == 0


def test_key_cache_is_bounded_and_holds_a_working_set_of_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from filters.redis_proxy.pool import ClusterPool

    monkeypatch.setattr(ClusterPool, "CACHE_SIZE", 16)
    proxy = Proxy()
    c = proxy.client()
    pool = c.filter.fast_pool
    assert pool is not None
    hashed: list[bytes] = []
    real_hash = pool.key_hash
    pool.key_hash = lambda key: hashed.append(key) or real_hash(key)  # type: ignore[method-assign]

    def get_all(keys: list[bytes]) -> None:
        c.send(*[[b"GET", k] for k in keys])
        for port in (7001, 7002):
            n = sum(1 for k in keys if proxy.port_of(k) == port)
            if n:
                answer(proxy, port, b"$-1\r\n" * n)
        assert c.replies() == [None] * len(keys)

    for i in range(10):  # 10 x CACHE_SIZE distinct keys: never more than two generations held
        get_all([b"k%d" % (16 * i + j) for j in range(16)])
        assert len(pool._cache) + len(pool._old) <= 2 * ClusterPool.CACHE_SIZE
    working = [b"w%d" % i for i in range(16)]
    get_all(working)
    hashed.clear()
    for seed in range(5):  # any order: a working set of CACHE_SIZE keys is never hashed again
        order = working[seed:] + working[:seed]
        get_all(order[::-1] if seed % 2 else order)
    assert hashed == []


def test_mget_fragments_are_cut_verbatim_and_odd_shapes_still_caught() -> None:
    proxy = Proxy()
    a1, a2 = proxy.keys_on(7001, 2)
    b1, b2 = proxy.keys_on(7002, 2)
    c = proxy.client()
    c.send([b"MGET", a1, b1, a2, b2], [b"MGET", a1, b1, a2, b2], [b"MGET", a1, b1, a2, b2])
    answer(proxy, 7001, b"*2\r\n$0\r\n\r\n$-1\r\n"  # an empty value and a null
           b"*2\r\n$1\r\nx\r\n:1\r\n"  # an integer where a value belongs
           b"*3\r\n$1\r\nx\r\n$1\r\ny\r\n$1\r\nz\r\n")  # three values for two keys
    answer(proxy, 7002, b"*2\r\n$5\r\nb1\r\nX\r\n$2\r\nb2\r\n" * 3)
    first, second, third = c.replies()
    assert first == [b"", b"b1\r\nX", None, b"b2"]  # empty and CRLF-holding values intact
    assert second[0] == b"x" and text(second[2]) == "upstream protocol error"  # ':1' is no value
    assert [text(third[0]), text(third[2])] == ["upstream protocol error"] * 2  # 3 values for 2 keys
    assert third[1] == b"b1\r\nX" and third[3] == b"b2"
