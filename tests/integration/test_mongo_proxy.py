"""mongo_proxy end to end: pymongo -> meshproxy (mongo_proxy + tcp_proxy) -> MockupDB.

One meshproxy process serves the module, with one listener per upstream:

* ``mongo``   -> MockupDB (``maxWireVersion`` 17): find + getMore, insert (document sequences),
  update, delete, aggregate + killCursors, large documents, unacknowledged writes;
* ``zlib``    -> a small hand-written OP_MSG server that negotiates zlib: MockupDB cannot speak
  OP_COMPRESSED, so this one does (it decompresses requests and compresses its replies);
* ``delayed`` -> MockupDB behind a 100% fixed delay fault;
* ``raw``     -> an echo server, for traffic that is not MongoDB at all.

Every operation must arrive intact (the driver gets its answers; MockupDB sees the documents) and
be counted under the right command and collection in the shared-memory stats segment, read with
``Segment.attach(base_id, read_only=True)``. MockupDB answers are scripted from the test thread
while the driver runs in a worker thread; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from mockupdb import MockupDB

from integration.harness import (
    IO_TIMEOUT_S,
    LOCALHOST,
    MeshProxy,
    Upstream,
    bootstrap,
    connect,
    echo_handler,
    listener,
    recv_exactly,
    static_cluster,
    tcp_proxy_filter,
    wait_for,
)
from stats_shm import Segment, Snapshot

MONGO_TYPE = "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"
HELLO = {"ismaster": True, "maxWireVersion": 17, "minWireVersion": 0, "maxBsonObjectSize": 16 * 1024 * 1024,
         "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000, "ok": 1.0}
DELAY_S = 0.3


def mongo_filter(stat_prefix: str, **fields: Any) -> dict[str, Any]:
    typed = {"@type": MONGO_TYPE, "stat_prefix": stat_prefix, **fields}
    return {"name": "envoy.filters.network.mongo_proxy", "typed_config": typed}


# ----- a zlib-speaking OP_MSG server (MockupDB has no OP_COMPRESSED) --------------------------------


class ZlibMongo:
    """Answers hello (advertising zlib), find and insert; replies compressed when asked compressed."""

    def __init__(self) -> None:
        self.compressed_requests = 0
        self.commands: list[str] = []
        self.inserted: list[dict[str, Any]] = []

    def handle(self, sock: socket.socket) -> None:
        while header := sock.recv(16, socket.MSG_WAITALL):
            length, request_id, _, op = struct.unpack("<iiii", header)
            body = recv_exactly(sock, length - 16)
            compressed = op == 2012
            if compressed:
                self.compressed_requests += 1
                op, _size, _compressor = struct.unpack_from("<iiB", body)
                body = zlib.decompress(body[9:])
            if op == 2004:  # the legacy handshake: OP_QUERY on admin.$cmd
                ns_end = body.index(b"\x00", 4)
                query = bson.decode(body[ns_end + 9:])
                answer = self.answer(query)
                payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(answer)
                sock.sendall(struct.pack("<iiii", 16 + len(payload), 1, request_id, 1) + payload)
                continue
            doc, pos = {}, 4
            while pos < len(body):
                kind = body[pos]
                size = struct.unpack_from("<i", body, pos + 1)[0]
                if kind == 0:
                    doc.update(bson.decode(body[pos + 1:pos + 1 + size]))
                else:
                    identifier_end = body.index(b"\x00", pos + 5)
                    docs = bson.decode_all(body[identifier_end + 1:pos + 1 + size])
                    doc[body[pos + 5:identifier_end].decode()] = docs
                pos += 1 + size
            payload = struct.pack("<I", 0) + b"\x00" + bson.encode(self.answer(doc))
            if compressed:
                payload = struct.pack("<iiB", 2013, len(payload), 2) + zlib.compress(payload)
            sock.sendall(struct.pack("<iiii", 16 + len(payload), 1, request_id, 2012 if compressed else 2013)
                         + payload)

    def answer(self, doc: dict[str, Any]) -> dict[str, Any]:
        command = next(iter(doc))
        self.commands.append(command)
        if command.lower() in ("ismaster", "hello"):
            return {**HELLO, "compression": ["zlib"]}
        if command == "find":
            batch = [{"_id": i, "text": "z" * 2000} for i in range(3)]
            cursor = {"id": bson.Int64(0), "ns": f"zdb.{doc['find']}", "firstBatch": batch}
            return {"cursor": cursor, "ok": 1.0}
        if command == "insert":
            self.inserted.extend(doc["documents"])
            return {"n": len(doc["documents"]), "ok": 1.0}
        return {"ok": 1.0}


# ----- the module's proxy ---------------------------------------------------------------------------


@dataclass
class Setup:
    proxy: MeshProxy
    mockup: MockupDB
    delayed_mockup: MockupDB
    zlib_server: ZlibMongo
    access_log: Path

    def client(self, listener_name: str, **options: Any) -> pymongo.MongoClient[dict[str, Any]]:
        port = self.proxy.ports[listener_name]
        return pymongo.MongoClient(f"mongodb://{LOCALHOST}:{port}/?directConnection=true",
                                   serverSelectionTimeoutMS=5000, connectTimeoutMS=5000,
                                   socketTimeoutMS=int(IO_TIMEOUT_S * 1000), heartbeatFrequencyMS=60_000,
                                   **options)

    def stats(self) -> Snapshot:
        segment = Segment.attach(self.proxy.base_id, read_only=True)
        try:
            return segment.snapshot()
        finally:
            segment.close()

    def counters(self, prefix: str) -> dict[str, int]:
        root = f"mongo.{prefix}."
        return {k[len(root):]: v for k, v in self.stats().counters.items() if k.startswith(root)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("mongo_proxy")
    mockup = MockupDB(auto_ismaster=HELLO, request_timeout=IO_TIMEOUT_S)
    delayed_mockup = MockupDB(auto_ismaster=HELLO, request_timeout=IO_TIMEOUT_S)
    delayed_mockup.autoresponds("ping", ok=1)
    zlib_server = ZlibMongo()
    zlib_upstream = Upstream(zlib_server.handle)
    echo = Upstream(echo_handler)
    access_log = workdir / "mongo_access.log"
    mockup.run()
    delayed_mockup.run()
    delay = {"fixed_delay": f"{DELAY_S}s", "percentage": {"numerator": 100}}
    config = bootstrap(
        [listener("mongo", 0, mongo_filter("mongo", access_log=str(access_log)), tcp_proxy_filter("mockup")),
         listener("zlib", 0, mongo_filter("zlib"), tcp_proxy_filter("zlib")),
         listener("delayed", 0, mongo_filter("delayed", delay=delay), tcp_proxy_filter("delayed")),
         listener("raw", 0, mongo_filter("raw"), tcp_proxy_filter("echo"))],
        [static_cluster("mockup", [mockup.port]), static_cluster("zlib", [zlib_upstream.port]),
         static_cluster("delayed", [delayed_mockup.port]), static_cluster("echo", [echo.port])],
    )
    proxy = MeshProxy(workdir, config, concurrency=1)
    failures = request.session.testsfailed
    try:
        yield Setup(proxy.start(), mockup, delayed_mockup, zlib_server, access_log)
    finally:
        proxy.kill()
        for server in (mockup, delayed_mockup):
            server.stop()
        zlib_upstream.close()
        echo.close()
        if request.session.testsfailed > failures:
            print(proxy.log_tail(60))


def run(server: MockupDB, op: Callable[[], Any], *answers: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Run ``op`` (a driver call) in a thread while ``server`` answers its requests in order."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = op()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    requests = []
    for answer in answers:
        request = server.receives(timeout=IO_TIMEOUT_S)
        requests.append(request)
        request.replies(answer)
    thread.join(IO_TIMEOUT_S)
    assert not thread.is_alive(), "the driver call did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], requests


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def cursor_reply(ns: str, batch: list[dict[str, Any]], cursor_id: int, first: bool = True) -> dict[str, Any]:
    key = "firstBatch" if first else "nextBatch"
    return {"cursor": {"id": bson.Int64(cursor_id), "ns": ns, key: batch}, "ok": 1.0}


# ----- tests ----------------------------------------------------------------------------------------


def test_crud_counted_under_the_right_collection_and_command(setup: Setup) -> None:
    before = setup.counters("mongo")
    with setup.client("mongo") as client:
        users = client.app.users
        docs, _ = run(setup.mockup, lambda: list(users.find({"_id": {"$in": [1, 2, 3]}}, batch_size=2)),
                      cursor_reply("app.users", [{"_id": 1}, {"_id": 2}], 77),
                      cursor_reply("app.users", [{"_id": 3}], 0, first=False))
        assert [d["_id"] for d in docs] == [1, 2, 3]

        rows = [{"_id": i, "name": f"user{i}"} for i in range(1000)]
        result, requests = run(setup.mockup, lambda: users.insert_many(rows), {"n": 1000, "ok": 1.0})
        assert requests[0]["documents"] == rows  # the document sequence arrived intact
        assert len(result.inserted_ids) == 1000

        result, _ = run(setup.mockup, lambda: users.update_many({"a": 1}, {"$set": {"b": 2}}),
                        {"n": 3, "nModified": 3, "ok": 1.0})
        assert result.modified_count == 3
        result, _ = run(setup.mockup, lambda: users.delete_many({"a": 1}), {"n": 2, "ok": 1.0})
        assert result.deleted_count == 2

        def aggregate_then_close() -> dict[str, Any]:
            with users.aggregate([{"$match": {"a": 1}}], batchSize=1) as cursor:
                return next(cursor)

        first, requests = run(setup.mockup, aggregate_then_close, cursor_reply("app.users", [{"_id": 9}], 88),
                              {"cursorsKilled": [bson.Int64(88)], "ok": 1.0})
        assert first == {"_id": 9} and requests[1].command_name == "killCursors"

    got = delta(setup.counters("mongo"), before)
    assert got["collection.users.query.total"] == 1 and got["collection.users.query.multi_get"] == 1
    assert got["op_query"] == 1 and got["op_get_more"] == 1 and got["op_kill_cursors"] == 1
    for op in ("insert", "update", "delete"):
        assert got[f"op_{op}"] == got[f"cmd.{op}.total"] == got[f"collection.users.{op}.total"] == 1
    assert got["collection.users.aggregate.total"] == 1
    assert got["cmd.unknown_command.total"] >= 3  # getMore, aggregate, killCursors (+ handshakes)
    assert got["op_reply_valid_cursor"] == 2  # the find and the aggregate left a cursor open
    assert "decoding_error" not in got
    histograms = setup.stats().histograms
    assert histograms["mongo.mongo.collection.users.insert.reply_num_docs"].sum >= 1000
    assert sum(histograms["mongo.mongo.collection.users.query.reply_time_ms"].buckets) >= 1
    assert setup.stats().gauges["mongo.mongo.op_query_active"] == 0


def test_large_documents_intact(setup: Setup) -> None:
    before = setup.counters("mongo")
    big = {"_id": 1, "blob": os.urandom(12 * 1024 * 1024)}
    with setup.client("mongo") as client:
        files = client.app.files
        _, requests = run(setup.mockup, lambda: files.insert_one(big), {"n": 1, "ok": 1.0})
        assert requests[0]["documents"] == [big]
        back, _ = run(setup.mockup, lambda: files.find_one({"_id": 1}), cursor_reply("app.files", [big], 0))
        assert back == big
    got = delta(setup.counters("mongo"), before)
    assert got["collection.files.insert.total"] == 1 and got["collection.files.query.total"] == 1
    assert "decoding_error" not in got
    size = setup.stats().histograms["mongo.mongo.collection.files.query.reply_size"]
    assert size.sum >= 12 * 1024 * 1024


def test_unacknowledged_write_has_no_reply(setup: Setup) -> None:
    before = setup.counters("mongo")
    with setup.client("mongo", w=0) as client:
        client.app.events.insert_one({"kind": "click"})
        request = setup.mockup.receives(timeout=IO_TIMEOUT_S)  # moreToCome: nothing to answer
        assert request["documents"][0]["kind"] == "click"
    got = delta(setup.counters("mongo"), before)
    assert got["op_unacknowledged"] == 1 and got["collection.events.insert.total"] == 1


def test_zlib_compression_negotiated(setup: Setup) -> None:
    before = setup.counters("zlib")
    with setup.client("zlib", compressors="zlib") as client:
        docs = list(client.zdb.items.find({"kind": "a"}))
        client.zdb.items.insert_many([{"_id": i, "v": "x" * 500} for i in range(50)])
    assert [d["_id"] for d in docs] == [0, 1, 2] and docs[0]["text"] == "z" * 2000
    assert [d["_id"] for d in setup.zlib_server.inserted] == list(range(50))
    assert setup.zlib_server.compressed_requests >= 2
    got = delta(setup.counters("zlib"), before)
    assert got["op_compressed"] >= 4  # both requests and both replies
    assert got["collection.items.query.total"] == 1 and got["collection.items.insert.total"] == 1
    assert got["collection.items.query.scatter_get"] == 1
    assert "decoding_error" not in got


def test_delay_fault_measured(setup: Setup) -> None:
    with setup.client("delayed") as client:
        client.admin.command("ping")  # connect and handshake (delayed too)
        before = setup.counters("delayed").get("delays_injected", 0)
        start = time.monotonic()
        client.admin.command("ping")
        elapsed = time.monotonic() - start
    assert DELAY_S <= elapsed < DELAY_S + 2.0
    assert setup.counters("delayed")["delays_injected"] > before


def test_not_mongo_passes_untouched_and_counts_one_error(setup: Setup) -> None:
    payload = bytes.fromhex("160301020001") + os.urandom(200_000)  # a TLS record header, then noise
    with connect(setup.proxy.ports["raw"]) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(IO_TIMEOUT_S)
    assert setup.counters("raw")["decoding_error"] == 1


def test_access_log_lines(setup: Setup) -> None:
    with setup.client("mongo") as client:
        run(setup.mockup, lambda: client.app.logged.find_one({"secret": "s3cr3t"}),
            cursor_reply("app.logged", [{"_id": 5}], 0))

    def find_line() -> dict[str, Any] | None:
        text = setup.access_log.read_text() if setup.access_log.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        return next((x for x in lines if x["ns"] == "app.logged"), None)

    line = wait_for(find_line, 5.0, "the access-log line of the find")
    assert line["op"] == "OP_MSG" and line["command"] == "find" and line["reply_docs"] == 1
    assert line["ok"] is True and line["reply_time_ms"] >= 0 and line["reply_size"] > 0
    assert "s3cr3t" not in setup.access_log.read_text()
