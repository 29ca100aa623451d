"""The mongo_proxy filter driven with fake callbacks: real decoder, real HeapStore, hand-made frames.

Frames are written out from the wire layouts with ``bson.encode`` (as in test_mongo_codec.py);
``tests/fixtures/mongo/session_*.bin`` are real pymongo <-> MockupDB bytes. Each test checks what
the issue asks of the sniffer: Envoy's stat names for what Envoy counts, the OP_MSG extension,
bytes passed through untouched, robustness, the delay fault and the access log.
"""

from __future__ import annotations

import json
import pathlib
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters.api import ConnectionEvent, FilterStatus, NetworkFilter
from filters.mongo_proxy import filter as mongo_filter
from filters.mongo_proxy.config import DelayFault, MongoProxyConfig
from filters.mongo_proxy.filter import MAX_HELD_BYTES, MongoProxyFilter, build
from meshproxy.admin.tags import default_producer
from stats_shm import HeapStore, Snapshot

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "mongo"
CONTINUE, STOP = FilterStatus.CONTINUE, FilterStatus.STOP_ITERATION
P = "mongo.m."

# ----- frames -------------------------------------------------------------------------------------


def frame(op: int, body: bytes, request_id: int, response_to: int = 0) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, op) + body


def op_msg(body: Mapping[str, Any], *, request_id: int = 1, response_to: int = 0, flags: int = 0,
           sequences: Iterable[tuple[str, list[Mapping[str, Any]]]] = ()) -> bytes:
    payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body)
    for identifier, docs in sequences:
        section = identifier.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    return frame(2013, payload, request_id, response_to)


def reply(body: Mapping[str, Any], to: int, *, request_id: int = 1000, flags: int = 0) -> bytes:
    return op_msg(body, request_id=request_id, response_to=to, flags=flags)


def cursor(batch: list[Mapping[str, Any]], cursor_id: int = 0, first: bool = True) -> dict[str, Any]:
    key = "firstBatch" if first else "nextBatch"
    return {"cursor": {"id": bson.Int64(cursor_id), "ns": "app.users", key: batch}, "ok": 1.0}


def op_query(ns: str, query: Mapping[str, Any], *, request_id: int = 1, flags: int = 0) -> bytes:
    body = struct.pack("<i", flags) + ns.encode() + b"\x00" + struct.pack("<ii", 0, -1) + bson.encode(query)
    return frame(2004, body, request_id)


def op_reply(docs: list[Mapping[str, Any]], to: int, *, flags: int = 0, cursor_id: int = 0) -> bytes:
    body = struct.pack("<iqii", flags, cursor_id, 0, len(docs)) + b"".join(bson.encode(d) for d in docs)
    return frame(1, body, 900, to)


def zlib_wrap(inner: bytes) -> bytes:
    _, request_id, response_to, op = struct.unpack_from("<iiii", inner)
    body = inner[16:]
    return frame(2012, struct.pack("<iiB", op, len(body), 2) + zlib.compress(body), request_id, response_to)


def find(coll: str = "users", request_id: int = 1, **fields: Any) -> bytes:
    return op_msg({"find": coll, **fields, "$db": "app"}, request_id=request_id)


# ----- fakes --------------------------------------------------------------------------------------


class FakeTimer:
    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """call_later only records; tests fire timers by hand."""

    def __init__(self) -> None:
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        timers, self.timers = [t for t in self.timers if not t.cancelled], []
        for timer in timers:
            timer.callback()


class Info:
    id = 7
    remote_address = ("127.0.0.1", 50312)
    local_address = ("127.0.0.1", 27017)
    start_time = 0.0


class Callbacks:
    """The connection side: records what the filter passes on after a delay, and read_disable."""

    def __init__(self, loop: FakeLoop) -> None:
        self.info = Info()
        self.loop = loop
        self.injected: list[tuple[bytes, bool]] = []
        self.read_disabled = 0

    def inject_read_data(self, data: bytes, end_stream: bool, after: NetworkFilter) -> None:
        self.injected.append((data, end_stream))

    def read_disable(self, disable: bool) -> None:
        self.read_disabled += 1 if disable else -1


class Worker:
    def __init__(self) -> None:
        self.index = 0
        self.loop = FakeLoop()
        self.stats = HeapStore()
        self.clusters = None


class Harness:
    """One filter config in one worker; ``connect()`` makes a connection's filter."""

    def __init__(self, **config: Any) -> None:
        self.worker = Worker()
        self.factory = build(MongoProxyConfig("m", **config), self.worker)  # type: ignore[arg-type]

    def connect(self) -> tuple[MongoProxyFilter, Callbacks]:
        f = self.factory()
        assert isinstance(f, MongoProxyFilter)
        callbacks = Callbacks(self.worker.loop)
        f.initialize(callbacks)  # type: ignore[arg-type]
        return f, callbacks

    def snap(self) -> Snapshot:
        return self.worker.stats.snapshot()

    def counters(self) -> dict[str, int]:
        return {k[len(P):]: v for k, v in self.snap().counters.items() if k.startswith(P) and v}

    def count(self, histogram: str) -> int:
        data = self.snap().histograms.get(P + histogram)
        return 0 if data is None else int(sum(data.buckets))


def exchange(f: MongoProxyFilter, request: bytes, answer: bytes | None = None) -> None:
    assert f.on_data(request, False) is CONTINUE
    if answer is not None:
        assert f.on_write(answer, False) is CONTINUE


# ----- OP_MSG: Envoy's names, extended ------------------------------------------------------------


def test_find_is_a_query_with_collection_stats_and_reply_histograms() -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, find(filter={"age": {"$gt": 30}}), reply(cursor([{"_id": 1}, {"_id": 2}], 55), to=1))
    c = h.counters()
    assert c["op_msg"] == 1 and c["op_query"] == 1 and c["op_reply"] == 1
    assert c["collection.users.query.total"] == 1 and c["collection.users.query.scatter_get"] == 1
    assert c["op_query_scatter_get"] == 1 and c["op_query_no_max_time"] == 1
    assert c["op_reply_valid_cursor"] == 1
    assert "cmd.unknown_command.total" not in c  # find is never a command
    for name in ("reply_num_docs", "reply_size", "reply_time_ms"):
        assert h.count(f"collection.users.query.{name}") == 1
    docs = h.snap().histograms[P + "collection.users.query.reply_num_docs"]
    assert docs.sum == 2.0  # the first batch's length
    assert h.snap().gauges[P + "op_query_active"] == 0


@pytest.mark.parametrize(("fields", "counter"), [
    ({"filter": {"_id": 5}}, None),
    ({"filter": {"_id": {"$in": [1, 2]}}}, "multi_get"),
    ({"filter": {"name": "x"}}, "scatter_get"),
    ({}, "scatter_get"),
])
def test_query_type_follows_the_filter_id(fields: dict[str, Any], counter: str | None) -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, find(**fields, maxTimeMS=100))
    c = h.counters()
    assert "op_query_no_max_time" not in c
    for kind in ("scatter_get", "multi_get"):
        expected = 1 if kind == counter else None
        assert c.get(f"op_query_{kind}") == expected and c.get(f"collection.users.query.{kind}") == expected


def test_find_cursor_options_and_exhaust_flag() -> None:
    h = Harness()
    f, _ = h.connect()
    body = {"find": "users", "tailable": True, "awaitData": True, "noCursorTimeout": True, "$db": "app"}
    exchange(f, op_msg(body, flags=1 << 16))
    c = h.counters()
    for name in ("tailable_cursor", "await_data", "no_cursor_timeout", "exhaust"):
        assert c[f"op_query_{name}"] == 1


def test_callsite_from_a_json_comment() -> None:
    h = Harness()
    f, _ = h.connect()
    comment = json.dumps({"hostname": "api-1", "callingFunction": "getByMongoId"})
    exchange(f, find(comment=comment, filter={"_id": {"$in": [1]}}), reply(cursor([{"_id": 1}]), to=1))
    exchange(f, find(comment="just text", request_id=2))
    c = h.counters()
    assert c["collection.users.callsite.getByMongoId.query.total"] == 1
    assert c["collection.users.callsite.getByMongoId.query.multi_get"] == 1
    assert c["collection.users.query.total"] == 2
    assert h.count("collection.users.callsite.getByMongoId.query.reply_time_ms") == 1


def test_insert_update_delete_with_document_sequences() -> None:
    h = Harness()
    f, _ = h.connect()
    docs = [{"_id": i, "name": f"u{i}"} for i in range(100)]
    exchange(f, op_msg({"insert": "users", "ordered": True, "$db": "app"}, sequences=[("documents", docs)]),
             reply({"n": 100, "ok": 1.0}, to=1))
    exchange(f, op_msg({"update": "users", "$db": "app"}, request_id=2,
                       sequences=[("updates", [{"q": {}, "u": {"$set": {"a": 1}}}])]),
             reply({"n": 3, "nModified": 3, "ok": 1.0}, to=2))
    exchange(f, op_msg({"delete": "users", "$db": "app"}, request_id=3,
                       sequences=[("deletes", [{"q": {}, "limit": 0}])]), reply({"n": 2, "ok": 1.0}, to=3))
    c = h.counters()
    assert c["op_insert"] == c["op_update"] == c["op_delete"] == 1
    for op in ("insert", "update", "delete"):
        assert c[f"cmd.{op}.total"] == 1 and c[f"collection.users.{op}.total"] == 1
        assert h.count(f"cmd.{op}.reply_time_ms") == 1 and h.count(f"collection.users.{op}.reply_size") == 1
    assert h.snap().histograms[P + "collection.users.insert.reply_num_docs"].sum == 100.0
    assert "op_query" not in c


def test_get_more_kill_cursors_aggregate_and_the_commands_list() -> None:
    h = Harness(commands=("aggregate", "insert"))
    f, _ = h.connect()
    exchange(f, op_msg({"aggregate": "users", "pipeline": [], "cursor": {}, "$db": "app"}),
             reply(cursor([{"_id": 1}], 9), to=1))
    exchange(f, op_msg({"getMore": bson.Int64(9), "collection": "users", "$db": "app"}, request_id=2),
             reply(cursor([{"_id": 2}], 9, first=False), to=2))
    exchange(f, op_msg({"killCursors": "users", "cursors": [bson.Int64(9)], "$db": "app"}, request_id=3),
             reply({"cursorsKilled": [bson.Int64(9)], "ok": 1.0}, to=3))
    exchange(f, op_msg({"find": "users", "$db": "app"}, request_id=4))
    c = h.counters()
    assert c["op_get_more"] == 1 and c["op_kill_cursors"] == 1 and c["op_query"] == 1
    assert c["cmd.aggregate.total"] == 1 and c["collection.users.aggregate.total"] == 1
    assert c["cmd.unknown_command.total"] == 2  # getMore and killCursors are not listed
    assert c["op_reply_valid_cursor"] == 2


def test_failures_and_cursor_not_found() -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, op_msg({"getMore": bson.Int64(5), "collection": "users", "$db": "app"}),
             reply({"ok": 0.0, "errmsg": "cursor id 5 not found", "code": 43}, to=1))
    exchange(f, op_msg({"bogus": 1, "$db": "app"}, request_id=2),
             reply({"ok": 0.0, "errmsg": "no such command", "code": 59}, to=2))
    c = h.counters()
    assert c["op_reply_query_failure"] == 2 and c["op_reply_cursor_not_found"] == 1


def test_unacknowledged_writes_expect_no_reply() -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, op_msg({"insert": "users", "writeConcern": {"w": 0}, "$db": "app"}, flags=2,
                       sequences=[("documents", [{"a": 1}])]))
    assert f.in_flight == {}
    assert h.counters()["op_unacknowledged"] == 1
    assert h.snap().gauges[P + "op_query_active"] == 0


def test_exhaust_replies_keep_the_request_in_flight() -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, op_msg({"getMore": bson.Int64(9), "collection": "users", "$db": "app"}, flags=1 << 16),
             reply(cursor([{"_id": 1}], 9, first=False), to=1, request_id=50, flags=2))
    assert set(f.in_flight) == {50}
    f.on_write(reply(cursor([{"_id": 2}], 0, first=False), to=50, request_id=51), False)
    assert f.in_flight == {}
    assert h.counters()["op_reply"] == 2
    assert h.count("cmd.unknown_command.reply_time_ms") == 2
    assert h.snap().gauges[P + "op_query_active"] == 0


def test_zlib_compressed_messages_are_decoded() -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, zlib_wrap(find()), zlib_wrap(reply(cursor([{"_id": 1}]), to=1)))
    c = h.counters()
    assert c["op_compressed"] == 2 and c["collection.users.query.total"] == 1
    assert h.count("collection.users.query.reply_time_ms") == 1


def test_the_same_stats_whatever_the_read_sizes() -> None:
    client = (FIXTURES / "session_client.bin").read_bytes()
    server = (FIXTURES / "session_server.bin").read_bytes()
    results = []
    for step in (None, 1, 7, 4096):
        h = Harness()
        f, _ = h.connect()
        chunks = [client] if step is None else [client[i:i + step] for i in range(0, len(client), step)]
        for chunk in chunks:
            assert f.on_data(chunk, False) is CONTINUE
        chunks = [server] if step is None else [server[i:i + step] for i in range(0, len(server), step)]
        for chunk in chunks:
            assert f.on_write(chunk, False) is CONTINUE
        results.append(h.counters())
    assert all(r == results[0] for r in results)
    c = results[0]  # the captured session: find + getMore, a 1000-document insert, a failing command
    assert c["collection.users.query.total"] == 1 and c["op_get_more"] == 1 and c["op_insert"] == 1
    assert c["collection.users.insert.total"] == 1 and c["op_reply_query_failure"] == 1
    assert "decoding_error" not in c


def pipelined_session() -> tuple[list[bytes], list[bytes]]:
    """Requests and their replies, every path of the filter: hot-path finds and writes, compressed,
    unacknowledged, legacy, a failure, an exhaust reply, and a reply nobody asked for."""
    requests = [
        find(request_id=1, filter={"_id": 1}), find(request_id=2, filter={"_id": 2}),
        find(request_id=3, filter={"name": "x"}, maxTimeMS=50), zlib_wrap(find(request_id=4)),
        op_msg({"insert": "users", "$db": "app"}, request_id=5, sequences=[("documents", [{"a": 1}])]),
        op_msg({"insert": "users", "$db": "app"}, request_id=6, flags=2,
               sequences=[("documents", [{"a": 1}])]),  # moreToCome: no reply
        op_query("app.$cmd", {"isMaster": 1}, request_id=7), find(request_id=8),
        op_msg({"getMore": bson.Int64(9), "collection": "users", "$db": "app"}, request_id=9),
    ]
    replies = [
        reply(cursor([{"_id": 1}]), to=1), reply(cursor([{"_id": 2}, {"_id": 3}], 77), to=2),
        reply(cursor([]), to=3), zlib_wrap(reply(cursor([{"_id": 4}]), to=4)),
        reply({"n": 1, "ok": 1.0}, to=5),
        op_reply([{"ismaster": True}], to=7), reply({"ok": 0.0, "errmsg": "no", "code": 2}, to=8),
        reply(cursor([{"_id": 5}], 9, first=False), to=9, flags=2, request_id=1001),  # exhaust ...
        reply(cursor([{"_id": 6}], 0, first=False), to=1001),  # ... and its last reply
        reply(cursor([]), to=4242),  # answers nothing in flight
    ]
    return requests, replies


def test_pipelined_reads_count_as_one_message_per_read() -> None:
    requests, replies = pipelined_session()
    results = []
    for together in (False, True):
        h = Harness()
        f, _ = h.connect()
        for chunk in ([b"".join(requests)] if together else requests):
            assert f.on_data(chunk, False) is CONTINUE
        assert h.snap().gauges[P + "op_query_active"] == 8
        for chunk in ([b"".join(replies)] if together else replies):
            assert f.on_write(chunk, False) is CONTINUE
        snap = h.snap()
        assert snap.gauges[P + "op_query_active"] == 0 and not f.in_flight
        # Reply times differ between runs: their counts must agree; sizes and docs exactly.
        histograms = {name: (data.count, None) if "time" in name else (data.buckets, data.sum)
                      for name, data in snap.histograms.items() if name.startswith(P)}
        results.append((h.counters(), histograms))
    assert results[0] == results[1]
    c = results[1][0]
    assert c["op_msg"] == 8 and c["op_query"] == 6 and c["op_reply"] == 10 and c["op_compressed"] == 2
    assert c["collection.users.query.total"] == 5 and c["op_query_scatter_get"] == 3
    assert c["op_reply_query_failure"] == 1 and c["op_unacknowledged"] == 1


def test_a_broken_message_in_a_pipelined_read_counts_the_ones_before_it() -> None:
    h = Harness()
    f, _ = h.connect()
    f.on_data(find(request_id=1) + find(request_id=2) + TLS_CLIENT_HELLO, False)
    c = h.counters()
    assert c["op_query"] == 2 and c["decoding_error"] == 1
    assert h.snap().gauges[P + "op_query_active"] == 0 and f.requests is None
    g, _ = h.connect()
    g.on_data(find(request_id=1) + find(request_id=2), False)
    g.on_write(reply(cursor([]), to=1) + reply(cursor([]), to=2) + b"\x16\x03\x01" + bytes(40), False)
    assert h.counters()["op_reply"] == 2 and h.counters()["decoding_error"] == 2
    assert h.count("collection.users.query.reply_time_ms") == 2
    assert h.snap().gauges[P + "op_query_active"] == 0


# ----- legacy opcodes, as Envoy counts them ---------------------------------------------------------


def test_legacy_op_query_and_op_reply() -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, op_query("admin.$cmd", {"ismaster": 1}), op_reply([{"ismaster": True, "ok": 1.0}], to=1))
    exchange(f, op_query("app.users", {"$query": {"_id": 1}, "$comment": '{"callingFunction": "f"}',
                                       "$maxTimeMS": 10}, request_id=2, flags=1 << 1),
             op_reply([{"_id": 1}], to=2, cursor_id=4, flags=0b10))
    exchange(f, op_query("app.$cmd", {"find": "users", "filter": {"a": 1}}, request_id=3))
    c = h.counters()
    assert c["op_query"] == 3 and c["op_reply"] == 2 and "op_msg" not in c
    assert c["cmd.unknown_command.total"] == 1  # isMaster is not in the default commands
    assert c["op_query_tailable_cursor"] == 1 and c["op_reply_valid_cursor"] == 1
    assert c["op_reply_query_failure"] == 1
    assert c["collection.users.query.total"] == 2 and c["collection.users.callsite.f.query.total"] == 1
    assert c["op_query_scatter_get"] == 1 and c["op_query_no_max_time"] == 1


def test_legacy_writes_are_counted_without_a_reply() -> None:
    h = Harness()
    f, _ = h.connect()
    insert = struct.pack("<i", 0) + b"app.users\x00" + bson.encode({"a": 1}) + bson.encode({"a": 2})
    update = struct.pack("<i", 0) + b"app.users\x00" + struct.pack("<i", 0) + bson.encode({}) * 2
    kill = struct.pack("<ii", 0, 1) + struct.pack("<q", 9)
    f.on_data(frame(2002, insert, 1) + frame(2001, update, 2) + frame(2007, kill, 3), False)
    c = h.counters()
    assert c["op_insert"] == c["op_update"] == c["op_kill_cursors"] == 1
    assert c["collection.users.insert.total"] == 1 and c["collection.users.update.total"] == 1
    assert f.in_flight == {}


# ----- connection lifetime -------------------------------------------------------------------------


@pytest.mark.parametrize(("event", "counter"), [
    (ConnectionEvent.REMOTE_CLOSE, "cx_destroy_remote_with_active_rq"),
    (ConnectionEvent.LOCAL_CLOSE, "cx_destroy_local_with_active_rq"),
])
def test_close_with_requests_in_flight(event: ConnectionEvent, counter: str) -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, find(request_id=1) + find(request_id=2))
    assert h.snap().gauges[P + "op_query_active"] == 2
    f.on_event(event)
    assert h.counters()[counter] == 1
    assert h.snap().gauges[P + "op_query_active"] == 0


def test_in_flight_requests_are_capped() -> None:
    h = Harness()
    f, _ = h.connect()
    f.on_data(b"".join(find(request_id=i) for i in range(mongo_filter.MAX_IN_FLIGHT + 10)), False)
    assert len(f.in_flight) == mongo_filter.MAX_IN_FLIGHT
    assert h.counters()["op_query"] == mongo_filter.MAX_IN_FLIGHT + 10


# ----- robustness ----------------------------------------------------------------------------------

TLS_CLIENT_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(160)
NOT_MONGO = [
    pytest.param(TLS_CLIENT_HELLO, id="tls"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(struct.pack("<iiii", 60_000_000, 1, 0, 2013), id="over-48MB"),
    pytest.param(struct.pack("<iiii", 8, 1, 0, 2013), id="short-length"),
    pytest.param(struct.pack("<iiii", 40, 1, 0, 4242) + bytes(24), id="unknown-opcode"),
    pytest.param(frame(2013, struct.pack("<Ibi", 0, 0, 50) + b"\x01", 1), id="truncated-bson"),
    pytest.param(op_reply([{"ok": 1.0}], to=3), id="reply-from-client"),
]


@pytest.mark.parametrize("garbage", NOT_MONGO)
def test_bad_input_counts_one_decoding_error_and_stops_sniffing(garbage: bytes) -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, find(), None)
    assert f.on_data(garbage, False) is CONTINUE
    assert f.on_data(garbage + find(request_id=9), False) is CONTINUE
    assert f.on_write(reply(cursor([]), to=1), False) is CONTINUE
    c = h.counters()
    assert c["decoding_error"] == 1
    assert c["op_query"] == 1 and "op_reply" not in c  # nothing decoded after the error
    assert f.requests is None and f.replies is None and f.in_flight == {}
    assert h.snap().gauges[P + "op_query_active"] == 0


def test_a_declared_length_over_the_limit_is_not_buffered() -> None:
    h = Harness()
    f, _ = h.connect()
    f.on_data(struct.pack("<iiii", 47_000_000, 1, 0, 2013) + bytes(1000), False)
    assert f.requests is not None and f.requests.buffered == 1016  # a legal length: waits for more
    f2, _ = h.connect()
    f2.on_data(struct.pack("<i", 48_000_001), False)
    assert f2.requests is None and h.counters()["decoding_error"] == 1


def test_a_bug_in_the_sniffer_never_escapes(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    h = Harness()
    f, _ = h.connect()
    monkeypatch.setattr(mongo_filter, "_bug_logged", False)

    def boom(self: object, msg: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(type(f.shared.classifier), "charge", boom)  # what every OP_MSG request calls
    assert f.on_data(find(), False) is CONTINUE
    g, _ = h.connect()
    assert g.on_data(find(), False) is CONTINUE
    assert h.counters()["decoding_error"] == 2
    assert sum("unexpected error" in r.message for r in caplog.records) == 1


mongo_frames = st.sampled_from([
    find(), find(filter={"_id": 1}), reply(cursor([{"_id": 1}]), to=1), zlib_wrap(find()),
    op_msg({"insert": "u", "$db": "a"}, sequences=[("documents", [{"a": 1}])]),
    op_query("a.$cmd", {"isMaster": 1}), op_reply([{"ok": 1.0}], to=1),
])
streams = st.lists(st.one_of(mongo_frames, st.binary(max_size=40)), max_size=6).map(b"".join)


@given(client=streams, server=streams, cut=st.integers(1, 64), mutate=st.lists(st.integers(0, 10_000)))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_the_filter_never_raises_and_never_stops_traffic(client: bytes, server: bytes, cut: int,
                                                              mutate: list[int]) -> None:
    data = bytearray(client)
    for position in mutate:
        if data:
            data[position % len(data)] ^= 0x5A
    h = Harness()
    f, _ = h.connect()
    for i in range(0, max(len(data), len(server)), cut):
        assert f.on_data(bytes(data[i:i + cut]), False) is CONTINUE
        assert f.on_write(server[i:i + cut], False) is CONTINUE
    f.on_event(ConnectionEvent.REMOTE_CLOSE)
    assert h.counters().get("decoding_error", 0) <= 1
    assert h.snap().gauges[P + "op_query_active"] == 0


# ----- bounded per-name stats ----------------------------------------------------------------------


def test_per_name_stats_stop_at_the_budget_and_count_the_overflow() -> None:
    h = Harness(max_stat_names=12)  # two query blocks of 6 names each
    f, _ = h.connect()
    for i, coll in enumerate(["a", "b", "c", "c", "d"]):
        exchange(f, find(coll, request_id=i), reply(cursor([]), to=i))
    c = h.counters()
    assert c["collection.a.query.total"] == c["collection.b.query.total"] == 1
    assert not any(name.startswith(("collection.c.", "collection.d.")) for name in h.snap().counters)
    assert c["stats_overflow"] == 3  # one per operation that got no per-name stats
    assert c["op_query"] == 5  # the fixed block still counts everything


def test_collection_names_are_one_stat_token() -> None:
    h = Harness()
    f, _ = h.connect()
    exchange(f, find("system.users"))
    exchange(f, op_msg({"find": "events 2026:q1", "$db": "app"}, request_id=2))
    names = set(h.counters())
    assert {"collection.system_users.query.total", "collection.events_2026_q1.query.total"} <= names
    extracted, tags = default_producer().produce(P + "collection.system_users.query.total")
    assert extracted == "mongo.collection.query.total"
    assert dict(tags) == {"envoy.mongo_collection": "system_users", "envoy.mongo_prefix": "m"}


# ----- delay fault ---------------------------------------------------------------------------------


def test_delay_holds_the_request_and_everything_after_it_in_order() -> None:
    h = Harness(delay=DelayFault(0.25, 100, 100))
    f, cb = h.connect()
    first, second = find(request_id=1), find(request_id=2)
    assert f.on_data(first, False) is STOP
    assert f.on_data(second[:10], False) is STOP
    assert f.on_data(second[10:], True) is STOP
    (timer,) = h.worker.loop.timers
    assert timer.delay == 0.25 and cb.injected == []
    assert h.counters()["delays_injected"] == 1  # requests seen during a delay are not delayed again
    assert h.counters()["op_query"] == 2  # but they are sniffed
    h.worker.loop.fire()
    assert cb.injected == [(first, False), (second[:10], False), (second[10:], True)]
    assert f.on_data(find(request_id=3), False) is STOP  # the next request is delayed again
    assert h.counters()["delays_injected"] == 2


def test_delay_percentage_zero_and_replies_never_delay() -> None:
    h = Harness(delay=DelayFault(1.0, 0, 100))
    f, _ = h.connect()
    assert f.on_data(find(), False) is CONTINUE
    h2 = Harness(delay=DelayFault(1.0, 1, 1_000_000))
    g, _ = h2.connect()
    assert g.on_write(reply({"ok": 1.0}, to=1), False) is CONTINUE
    assert "delays_injected" not in h.counters() | h2.counters()


def test_delay_pauses_reading_past_the_held_limit_and_close_cancels() -> None:
    h = Harness(delay=DelayFault(1.0, 100, 100))
    f, cb = h.connect()
    f.on_data(find(), False)
    f.on_data(bytes(MAX_HELD_BYTES), False)
    assert cb.read_disabled == 1
    f.on_event(ConnectionEvent.REMOTE_CLOSE)
    assert h.worker.loop.timers[0].cancelled and f.held is None
    h2 = Harness(delay=DelayFault(1.0, 100, 100))
    g, cb2 = h2.connect()
    g.on_data(find(), False)
    g.on_data(bytes(MAX_HELD_BYTES), False)
    h2.worker.loop.fire()
    assert cb2.read_disabled == 0 and len(cb2.injected) == 2


# ----- access log and dynamic metadata -------------------------------------------------------------


def read_log(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_access_log_one_line_per_operation_without_values(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mongo.log"
    h = Harness(access_log=str(path))
    f, _ = h.connect()
    exchange(f, find(filter={"ssn": "123-45-6789"}), reply(cursor([{"_id": 1}], 5), to=1))
    insert = op_msg({"insert": "users", "$db": "app"}, request_id=2, sequences=[("documents", [{"a": 1}])])
    duplicate = {"ok": 0.0, "errmsg": "E11000 duplicate key: ssn 123-45-6789", "code": 11000}
    exchange(f, insert, reply(duplicate, to=2))
    exchange(f, op_msg({"delete": "users", "$db": "app"}, request_id=3, flags=2))
    f.on_event(ConnectionEvent.REMOTE_CLOSE)  # flushes
    lines = read_log(path)
    assert [(x["command"], x["ns"]) for x in lines] == [("find", "app.users"), ("insert", "app.users"),
                                                        ("delete", "app.users")]
    found, inserted, deleted = lines
    assert found["op"] == "OP_MSG" and found["connection"] == 7 and found["downstream"] == "127.0.0.1:50312"
    assert found["reply_docs"] == 1 and found["ok"] is True and found["reply_time_ms"] >= 0
    assert found["time"].endswith("Z")
    assert inserted["error_code"] == 11000 and inserted["ok"] is False and inserted["request_docs"] == 1
    assert deleted["more_to_come"] is True and deleted["reply_time_ms"] is None
    assert "123-45-6789" not in path.read_text()


def test_access_log_query_values_and_slow_threshold(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mongo.log"
    h = Harness(access_log=str(path), log_query_values=True, slow_operation_threshold=3600.0)
    f, _ = h.connect()
    exchange(f, find(filter={"a": 1}), reply(cursor([]), to=1))
    f.on_event(ConnectionEvent.REMOTE_CLOSE)
    assert path.read_text() == ""  # nothing is that slow
    h2 = Harness(access_log=str(path), log_query_values=True)
    g, _ = h2.connect()
    exchange(g, find(filter={"a": 1}), reply({"ok": 0.0, "errmsg": "boom", "code": 2}, to=1))
    g.on_event(ConnectionEvent.REMOTE_CLOSE)
    (line,) = read_log(path)
    assert line["query"] == {"find": "users", "filter": {"a": 1}, "$db": "app"}
    assert line["errmsg"] == "boom"


def test_dynamic_metadata_lists_operations_per_namespace() -> None:
    h = Harness(emit_dynamic_metadata=True)
    f, _ = h.connect()
    f.on_data(find() + op_msg({"insert": "orders", "$db": "shop"}, request_id=2), False)
    assert f.dynamic_metadata == {"app.users": ["query"], "shop.orders": ["insert"]}
    f.on_data(op_msg({"hello": 1, "$db": "admin"}, request_id=3), False)
    assert f.dynamic_metadata == {}


# ----- config ---------------------------------------------------------------------------------------

ENVOY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"
MESHPROXY_TYPE = "type.googleapis.com/meshproxy.extensions.filters.network.mongo_proxy.v1.MongoProxy"
TYPED = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def load_chain(tmp_path: pathlib.Path, typed: dict[str, Any], *, last: bool = False) -> Any:
    mongo = {"name": "envoy.filters.network.mongo_proxy", "typed_config": typed}
    tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "t", "cluster": "db"}}
    doc = {"static_resources": {
        "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                       "filter_chains": [{"filters": [tcp, mongo] if last else [mongo, tcp]}]}],
        "clusters": [{"name": "db", "type": "STATIC", "load_assignment": {"cluster_name": "db", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 27017}}}}]}]}}]}}
    path = tmp_path / "envoy.yaml"
    path.write_text(json.dumps(doc))
    from meshproxy.config import load_config

    return load_config([str(path)])


def config_errors(tmp_path: pathlib.Path, typed: dict[str, Any], **kwargs: Any) -> str:
    from meshproxy.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_chain(tmp_path, typed, **kwargs)
    return str(info.value)


def test_envoy_config_compiles_before_tcp_proxy(tmp_path: pathlib.Path) -> None:
    typed = {"@type": ENVOY_TYPE, "stat_prefix": "m", "access_log": "/tmp/m.log",
             "emit_dynamic_metadata": True,
             "delay": {"fixed_delay": "0.5s", "percentage": {"numerator": 50, "denominator": "TEN_THOUSAND"}}}
    boot = load_chain(tmp_path, typed)
    compiled = boot.listeners[0].filter_chain.filters[0].config
    assert compiled == MongoProxyConfig("m", "/tmp/m.log", DelayFault(0.5, 50, 10_000), True)
    assert compiled.commands == ("delete", "insert", "update")
    boot = load_chain(tmp_path, {"@type": ENVOY_TYPE, "stat_prefix": "m", "commands": ["find", "count"]})
    assert boot.listeners[0].filter_chain.filters[0].config.commands == ("find", "count")


def test_meshproxy_extensions_need_the_meshproxy_type(tmp_path: pathlib.Path) -> None:
    typed = {"@type": ENVOY_TYPE, "stat_prefix": "m", "slow_operation_threshold": "1s"}
    errors = config_errors(tmp_path, typed)
    assert f"{TYPED}.slow_operation_threshold: 'slow_operation_threshold' is a meshproxy extension" in errors
    assert MESHPROXY_TYPE.rsplit("/", 1)[1] in errors
    typed = {"@type": MESHPROXY_TYPE, "stat_prefix": "m", "slow_operation_threshold": "0.1s",
             "log_query_values": True, "max_stat_names": 50}
    compiled = load_chain(tmp_path, typed).listeners[0].filter_chain.filters[0].config
    assert compiled.slow_operation_threshold == 0.1
    assert compiled.log_query_values is True and compiled.max_stat_names == 50


@pytest.mark.parametrize(("typed", "fragment"), [
    ({}, "missing required field 'stat_prefix'"),
    ({"stat_prefix": "m", "delay": {"percentage": {"numerator": 1}}}, "one of 'fixed_delay', 'header_delay'"),
    ({"stat_prefix": "m", "delay": {"fixed_delay": "0s"}}, "expected a duration > 0s"),
    ({"stat_prefix": "m", "delay": {"header_delay": {}}}, "'header_delay' is a valid Envoy field but not"),
    ({"stat_prefix": "m", "delay": {"fixed_delay": "1s", "percentage": {"denominator": "THOUSAND"}}},
     "expected one of HUNDRED, TEN_THOUSAND, MILLION"),
    ({"stat_prefix": "m", "comands": []}, "unknown field 'comands' in MongoProxy (did you mean 'commands'?)"),
])
def test_config_errors(tmp_path: pathlib.Path, typed: dict[str, Any], fragment: str) -> None:
    assert fragment in config_errors(tmp_path, {"@type": ENVOY_TYPE, **typed})


def test_mongo_proxy_is_not_terminal(tmp_path: pathlib.Path) -> None:
    errors = config_errors(tmp_path, {"@type": ENVOY_TYPE, "stat_prefix": "m"}, last=True)
    assert "the last filter must be terminal" in errors


def test_garbage_inside_a_find_filter_is_not_a_decoding_error() -> None:
    # The decoder only frames nested documents: an unknown element type inside the filter ends
    # the search for _id (a scatter get) instead of failing the connection.
    bad_filter = b"\x0b\x00\x00\x00\x20x\x00\x00\x00\x00\x00"
    elements = b"\x02find\x00" + struct.pack("<i", 6) + b"users\x00" + b"\x03filter\x00" + bad_filter
    body = struct.pack("<i", 4 + len(elements) + 1) + elements + b"\x00"
    h = Harness()
    f, _ = h.connect()
    exchange(f, frame(2013, struct.pack("<I", 0) + b"\x00" + body, 1))
    c = h.counters()
    assert "decoding_error" not in c
    assert c["collection.users.query.scatter_get"] == 1
