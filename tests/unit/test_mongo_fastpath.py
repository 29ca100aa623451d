"""The OP_MSG fast path (``fastpath`` + ``MongoDecoder.summaries``) against the full decoder.

Every frame is decoded both ways: ``summaries()`` (fed whole, one byte at a time, split at every
offset, with trailing bytes) must return exactly what the full decoder's ``OpMsg`` converts to,
and, for the layouts drivers and servers send, the fast reader must answer by itself (not hand the
frame over). Frames are written out from the wire layout with ``bson.encode``, as in
test_mongo_codec.py; ``tests/fixtures/mongo/session_*.bin`` are real pymongo <-> MockupDB bytes.
"""

from __future__ import annotations

import pathlib
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import bson
import pytest
from bson import Int64

from filters.mongo_proxy import fastpath
from filters.mongo_proxy.codec import NEED_DATA, MongoDecoder
from filters.mongo_proxy.fastpath import REPLIES, REQUESTS, SummaryReader
from filters.mongo_proxy.messages import FIND_AWAIT_DATA, FIND_TAILABLE, MongoProtocolError, OpMsg, OpReply

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "mongo"

# -- frames ------------------------------------------------------------------------------------------


def frame(op: int, body: bytes, request_id: int = 1, response_to: int = 0) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, op) + body


def op_msg(body: Mapping[str, Any] | bytes, *, flags: int = 0, request_id: int = 1, response_to: int = 0,
           sequences: Iterable[tuple[str, list[Mapping[str, Any]]]] = ()) -> bytes:
    payload = struct.pack("<I", flags) + b"\x00" + (body if isinstance(body, bytes) else bson.encode(body))
    for identifier, docs in sequences:
        section = identifier.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    return frame(2013, payload, request_id, response_to)


def document(*elements: bytes) -> bytes:
    """A BSON document from raw elements (for layouts ``bson.encode`` will not write)."""
    inner = b"".join(elements)
    return struct.pack("<i", 4 + len(inner) + 1) + inner + b"\x00"


def string(key: str, value: bytes) -> bytes:
    return b"\x02" + key.encode() + b"\x00" + struct.pack("<i", len(value) + 1) + value + b"\x00"


LSID = {"id": bson.Binary(bytes(range(16)), 4)}


# -- running both decoders ------------------------------------------------------------------------------


def full(data: bytes, reader: SummaryReader[Any]) -> list[object]:
    """The full decoder's messages, each OP_MSG converted to its summary."""
    decoder = MongoDecoder()
    decoder.feed(data)
    out: list[object] = []
    while (message := decoder.next_message()) is not NEED_DATA:
        out.append(reader.convert(message) if isinstance(message, OpMsg) else message)
    return out


def fed(data: bytes, reader: SummaryReader[Any], chunks: Iterable[bytes]) -> tuple[list[object], int]:
    decoder = MongoDecoder(summaries=reader)
    out: list[object] = []
    for chunk in chunks:
        out += decoder.summaries(chunk)
        assert not decoder.failed, decoder.error
    return out, decoder.buffered


def agree(data: bytes, reader: SummaryReader[Any], *, fast: bool = True) -> Any:
    """Check ``summaries`` against the full decoder however ``data`` is cut; return the one summary.

    ``fast``: the fast reader must summarise the frame itself.
    """
    expected = full(data, reader)
    assert len(expected) == 1
    assert fed(data, reader, [data]) == (expected, 0)
    assert fed(data, reader, [data[i : i + 1] for i in range(len(data))]) == (expected, 0)
    for cut in range(1, len(data)):
        assert fed(data, reader, [data[:cut], data[cut:]]) == (expected, 0), cut
    assert fed(data, reader, [data + data[:11]]) == (expected, 11)  # a partial next message waits
    assert fed(data, reader, [data * 3]) == (expected * 3, 0)
    summary = reader.read(data, 0, len(data), True)
    if fast:
        assert summary == expected[0], "the fast reader gave up on a common layout"
    return expected[0]


# -- requests -------------------------------------------------------------------------------------------

FIND = {"find": "users", "filter": {"_id": 7}, "limit": 1, "singleBatch": True, "lsid": LSID, "$db": "app"}


def test_pymongo_find_is_read_in_place() -> None:
    s = agree(op_msg(FIND, request_id=42), REQUESTS)
    assert s[:5] == (42, 0, "find", "users", "app")
    assert s[8:] == (None, 0, 0x10, None)  # no maxTimeMS, no options, filter._id is an int32


@pytest.mark.parametrize(("flt", "id_type"), [
    ({"_id": 7}, 0x10),
    ({"_id": bson.ObjectId()}, 0x07),
    ({"_id": "seven"}, 0x02),
    ({"_id": {"$in": [1, 2]}}, 0x03),
    ({"name": "x", "_id": Int64(5)}, 0x12),
    ({"name": "x"}, 0),
    ({}, 0),
])
def test_find_filter_id_type(flt: dict[str, Any], id_type: int) -> None:
    assert agree(op_msg({"find": "c", "filter": flt, "$db": "d"}), REQUESTS)[10] == id_type


def test_find_options_when_present() -> None:
    body = {"find": "c", "filter": {}, "maxTimeMS": Int64(250), "tailable": True, "awaitData": 1,
            "noCursorTimeout": False, "comment": "calls", "$db": "d"}
    assert agree(op_msg(body), REQUESTS)[8:] == (250, FIND_TAILABLE | FIND_AWAIT_DATA, 0, "calls")
    body = {"find": "c", "maxTimeMS": 1.5, "comment": 3, "$comment": "legacy", "$db": "d"}  # no filter
    assert agree(op_msg(body), REQUESTS)[8:] == (1, 0, 0, "legacy")
    assert agree(op_msg({"find": "c", "maxTimeMS": "soon", "$db": "d"}), REQUESTS)[8] is None


def test_keys_inside_the_filter_or_other_documents_are_not_the_commands() -> None:
    nested = {"comment": "no", "maxTimeMS": 5, "tailable": True}
    s = agree(op_msg({"find": "c", "filter": nested, "$db": "d"}), REQUESTS)
    assert (s[4], s[8:]) == ("d", (None, 0, 0, None))
    # a "$db" key in the filter too: two occurrences, so the full decoder reads the frame
    s = agree(op_msg({"find": "c", "filter": {**nested, "$db": "no"}, "$db": "d"}), REQUESTS, fast=False)
    assert (s[4], s[8:]) == ("d", (None, 0, 0, None))
    # after the filter (a let document): found once, not at the top level, so absent there
    body = {"find": "c", "filter": {}, "let": {"comment": "no", "maxTimeMS": 5}, "$db": "d"}
    assert agree(op_msg(body), REQUESTS)[8:] == (None, 0, 0, None)


def test_db_anywhere_and_absent() -> None:
    body = {"find": "c", "filter": {}, "$db": "d", "$readPreference": {"mode": "secondary"}, "lsid": LSID}
    assert agree(op_msg(body), REQUESTS)[4] == "d"  # not last (Go, Java): searched, then checked
    assert agree(op_msg({"ping": 1}), REQUESTS)[4] is None
    assert agree(op_msg({"ping": 1, "x": {"$db": "nested"}}), REQUESTS)[4] is None


def test_a_string_crafted_to_look_like_db_does_not_win() -> None:
    # "comment" holds bytes that read as a whole $db element and re-synchronise with the real
    # elements after it. Two occurrences: the fast path hands the frame to the full decoder.
    fake = b"a\x02$db\x00" + struct.pack("<i", 2) + b"x"
    body = document(string("find", b"c"), string("comment", fake), string("$db", b"real"))
    data = op_msg(body)
    assert REQUESTS.read(data, 0, len(data), True) is None
    assert agree(data, REQUESTS, fast=False)[4] == "real"


def test_get_more_insert_and_other_commands() -> None:
    get_more = {"getMore": Int64(77), "collection": "users", "batchSize": 10, "lsid": LSID, "$db": "app"}
    assert agree(op_msg(get_more), REQUESTS)[2:5] == ("getMore", "users", "app")
    docs = [{"_id": i, "n": "x" * i} for i in range(30)]
    insert = op_msg({"insert": "users", "ordered": True, "$db": "app"}, sequences=[("documents", docs)])
    s = agree(insert, REQUESTS)
    assert (s[2], s[7]) == ("insert", 30)
    assert agree(op_msg({"hello": 1, "helloOk": True, "$db": "admin"}, flags=1 << 16), REQUESTS)[:5] == (
        1, 1 << 16, "hello", None, "admin")
    aggregate = op_msg({"aggregate": 1, "pipeline": [], "$db": "d"})
    assert agree(aggregate, REQUESTS)[2:5] == ("aggregate", None, "d")
    assert agree(op_msg({"delete": "c", "$db": "d"}, flags=2), REQUESTS)[1] == 2  # moreToCome


def test_document_count_is_optional() -> None:
    data = op_msg({"insert": "c", "$db": "d"}, sequences=[("documents", [{"a": 1}] * 5)])
    decoder = MongoDecoder(summaries=REQUESTS, count_documents=False)
    (s,) = decoder.summaries(data)
    assert isinstance(s, tuple) and s[7] is None


@pytest.mark.parametrize("data", [
    frame(2013, struct.pack("<I", 1) + b"\x00" + bson.encode(FIND) + struct.pack("<I", 0xDEAD)),  # checksum
    op_msg({}),  # no command
    op_msg(b"\x10" + b"x" * 8),  # not a document
    op_msg(document(string("find", b"\xff"), string("$db", b"d"))),  # not UTF-8
])
def test_unusual_frames_go_to_the_full_decoder(data: bytes) -> None:
    assert REQUESTS.read(data, 0, len(data), True) is None
    decoder = MongoDecoder(summaries=REQUESTS)
    out = decoder.summaries(data)
    try:
        expected = full(data, REQUESTS)
    except MongoProtocolError as exc:
        assert (out, decoder.error) == ([], str(exc))
    else:
        assert out == expected and not decoder.failed


def test_first_names_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "MAX_NAMES", 8)
    monkeypatch.setattr(fastpath, "_NAMES", {})
    for i in range(50):
        data = op_msg({"find": f"c{i}", "$db": "d"})
        assert agree(data, REQUESTS)[3] == f"c{i}"
        assert len(fastpath._NAMES) <= 8


# -- replies --------------------------------------------------------------------------------------------


def cursor_reply(batch: list[Any], *, cursor_id: int = 0, key: str = "firstBatch", server_order: bool = True,
                 **extra: Any) -> dict[str, Any]:
    ns = "app.users"
    cursor = ({key: batch, "id": Int64(cursor_id), "ns": ns} if server_order
              else {"id": Int64(cursor_id), "ns": ns, key: batch})
    return {"cursor": cursor, "ok": 1.0, **extra}


@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 99, 100, 101, 1000])
def test_batches_are_counted_across_key_widths(size: int) -> None:
    reply = cursor_reply([{"_id": i} for i in range(size)], cursor_id=12)
    s = agree(op_msg(reply, response_to=5, request_id=9), REPLIES) if size < 200 else None
    data = op_msg(reply, response_to=5, request_id=9)
    if s is None:  # a big one: whole only
        (s,) = fed(data, REPLIES, [data])[0]
        assert [s] == full(data, REPLIES) and REPLIES.read(data, 0, len(data), True) == s
    assert s == (5, 9, 0, len(bson.encode(reply)), 1.0, None, None, 12, size, None)


def test_cursor_layouts() -> None:
    batch = [{"_id": 1}, {"_id": 2}]
    assert agree(op_msg(cursor_reply(batch, key="nextBatch")), REPLIES)[7:9] == (0, 2)
    assert agree(op_msg(cursor_reply(batch, server_order=False)), REPLIES)[7:9] == (0, 2)  # walked
    assert agree(op_msg(cursor_reply([1, "two", None])), REPLIES)[8] == 3  # not documents: walked
    rs = cursor_reply(batch, **{"$clusterTime": {"clusterTime": bson.Timestamp(1, 1)}, "operationTime":
                                bson.Timestamp(1, 1)})
    assert agree(op_msg(rs), REPLIES)[4] == 1.0


def test_write_and_plain_replies() -> None:
    assert agree(op_msg({"n": 3, "ok": 1.0}), REPLIES)[4:9] == (1.0, None, None, None, 3)
    assert agree(op_msg({"n": 3, "nModified": 2, "ok": 1.0}), REPLIES)[8] == 3  # ok searched
    assert agree(op_msg({"ok": 1.0}), REPLIES)[4:9] == (1.0, None, None, None, None)
    assert agree(op_msg({"ok": 1.0, "$clusterTime": {"t": 1}}), REPLIES)[4] == 1.0
    assert agree(op_msg({"n": 1, "ok": 1}), REPLIES)[4] == 1.0  # an int32 ok


def test_failures_and_other_replies_take_the_full_decoder() -> None:
    failure = op_msg({"ok": 0.0, "errmsg": "ns not found", "code": 26, "codeName": "NamespaceNotFound"})
    assert REPLIES.read(failure, 0, len(failure), True) is None
    assert agree(failure, REPLIES, fast=False)[4:7] == (0.0, 26, "ns not found")
    hello = op_msg({"isWritablePrimary": True, "maxWireVersion": 17, "ok": 1.0})
    assert agree(hello, REPLIES, fast=False)[4] == 1.0


# -- the decoder: in place, split, errors ---------------------------------------------------------------


def test_captured_session_agrees_and_is_mostly_fast() -> None:
    for name, reader in (("session_client.bin", REQUESTS), ("session_server.bin", REPLIES)):
        data = (FIXTURES / name).read_bytes()
        expected = full(data, reader)
        for chunks in ([data], [data[i : i + 7] for i in range(0, len(data), 7)],
                       [data[i : i + 1] for i in range(len(data))]):
            assert fed(data, reader, chunks) == (expected, 0)
        fast = []
        pos = 0
        while pos < len(data):
            length = struct.unpack_from("<i", data, pos)[0]
            fast.append(reader.read(data, pos, pos + length, True) is not None)
            pos += length
        # every request; every reply but the handshake (a long hello) and the failed command
        assert fast == ([True] * 5 if reader is REQUESTS else [False, True, True, True, False])


def test_only_the_incomplete_message_is_buffered() -> None:
    data = op_msg(FIND) * 3
    decoder = MongoDecoder(summaries=REQUESTS)
    assert len(decoder.summaries(data + data[:30])) == 3
    assert decoder.buffered == 30
    assert len(decoder.summaries(data[30:])) == 3  # the first one completed from the next read
    assert decoder.buffered == 0


def test_summaries_and_next_summary_and_feed_agree() -> None:
    query = frame(2004, struct.pack("<i", 0) + b"a.$cmd\x00" + bytes(8) + bson.encode({"ping": 1}))
    data = op_msg(FIND) + query + op_msg(FIND, request_id=2)
    decoder = MongoDecoder(summaries=REQUESTS)
    decoder.feed(data[:50])
    decoder.feed(data[50:])  # fed twice without draining
    items = []
    while (item := decoder.next_summary()) is not NEED_DATA:
        items.append(item)
    assert items == full(data, REQUESTS) == fed(data, REQUESTS, [data])[0]


def test_summaries_stop_at_a_protocol_error_and_keep_what_came_before() -> None:
    bad = struct.pack("<iiii", 10, 0, 0, 2013)
    decoder = MongoDecoder(summaries=REPLIES)
    out = decoder.summaries(op_msg({"ok": 1.0}) + bad + op_msg({"ok": 1.0}))
    assert len(out) == 1 and decoder.failed
    assert decoder.error is not None and "messageLength 10" in decoder.error
    assert decoder.summaries(op_msg({"ok": 1.0})) == [] and decoder.buffered == 0


def test_legacy_messages_come_whole() -> None:
    reply = frame(1, struct.pack("<iqii", 0, 0, 0, 1) + bson.encode({"ok": 1.0}), 2, 1)
    (message,) = MongoDecoder(summaries=REPLIES).summaries(reply)
    assert isinstance(message, OpReply)
