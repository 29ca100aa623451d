"""MongoDecoder on byte-level fixtures: every opcode, fed whole, a byte at a time, with trailing bytes.

Frames are built here by hand from the wire-protocol layouts with ``bson.encode`` for documents,
so the tests check the decoder against the spec rather than against its own encoder.
"""

from __future__ import annotations

import datetime
import pathlib
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping

import bson
import pytest
from bson import Int64

from filters.mongo_proxy.codec import (
    MAX_MESSAGE_SIZE,
    NEED_DATA,
    SUPPORTED_COMPRESSORS,
    MongoDecoder,
)
from filters.mongo_proxy.messages import (
    Compressed,
    Compressor,
    DocumentSequence,
    Message,
    MongoProtocolError,
    OpCode,
    OpCommand,
    OpCommandReply,
    OpDelete,
    OpGetMore,
    OpInsert,
    OpKillCursors,
    OpMsg,
    OpQuery,
    OpReply,
    OpUpdate,
)
from filters.mongo_proxy.rawbson import first_element

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "mongo"

# -- frame builders (the wire layouts, written out) --------------------------------------------


def frame(op: int, body: bytes, request_id: int = 1, response_to: int = 0) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, op) + body


def doc(value: Mapping[str, object]) -> bytes:
    return bson.encode(value)


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def op_msg(
    body: Mapping[str, object] | bytes,
    *,
    flags: int = 0,
    sequences: Iterable[tuple[str, list[Mapping[str, object]]]] = (),
    sequences_first: bool = False,
    checksum: int | None = None,
    request_id: int = 1,
    response_to: int = 0,
) -> bytes:
    body_section = b"\x00" + (body if isinstance(body, bytes) else doc(body))
    seq_sections = b""
    for identifier, docs in sequences:
        payload = cstr(identifier) + b"".join(doc(d) for d in docs)
        seq_sections += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    sections = seq_sections + body_section if sequences_first else body_section + seq_sections
    if checksum is not None:
        flags |= 1
    payload = struct.pack("<I", flags) + sections
    if checksum is not None:
        payload += struct.pack("<I", checksum)
    return frame(2013, payload, request_id, response_to)


def op_query(
    name: str, query: Mapping[str, object], *, flags: int = 0, skip: int = 0, limit: int = -1,
    fields: Mapping[str, object] | None = None, request_id: int = 1,
) -> bytes:  # fmt: skip
    body = struct.pack("<i", flags) + cstr(name) + struct.pack("<ii", skip, limit) + doc(query)
    if fields is not None:
        body += doc(fields)
    return frame(2004, body, request_id)


def op_reply(
    docs: list[Mapping[str, object]], *, flags: int = 0, cursor_id: int = 0, starting_from: int = 0,
    number_returned: int | None = None, response_to: int = 1,
) -> bytes:  # fmt: skip
    count = len(docs) if number_returned is None else number_returned
    body = struct.pack("<iqii", flags, cursor_id, starting_from, count) + b"".join(doc(d) for d in docs)
    return frame(1, body, 2, response_to)


def op_compressed(inner: bytes, compressor_id: int, compress: Callable[[bytes], bytes]) -> bytes:
    _, request_id, response_to, op = struct.unpack_from("<iiii", inner)
    body = inner[16:]
    return frame(
        2012, struct.pack("<iiB", op, len(body), compressor_id) + compress(body), request_id, response_to
    )


# -- feeding -----------------------------------------------------------------------------------


def decode(data: bytes, *, step: int | None = None, decompress: bool = True) -> tuple[list[Message], int]:
    """All messages in ``data`` fed in ``step``-byte chunks (whole if None), and bytes left over."""
    decoder = MongoDecoder(decompress=decompress)
    out: list[Message] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        decoder.feed(chunk)
        while (message := decoder.next_message()) is not NEED_DATA:
            out.append(message)
    return out, decoder.buffered


def decode_one(data: bytes, **kwargs: bool) -> Message:
    """The single message in ``data``, checked to decode the same whole, bytewise and with trailing bytes."""
    whole, left = decode(data, **kwargs)
    assert left == 0
    assert len(whole) == 1
    assert decode(data, step=1, **kwargs) == (whole, 0)
    trailing = data[:11]  # a partial next message stays buffered
    assert decode(data + trailing, **kwargs) == (whole, len(trailing))
    assert whole[0].wire_size == len(data)
    return whole[0]


def decode_error(data: bytes, *, step: int | None = None) -> str:
    with pytest.raises(MongoProtocolError) as info:
        decode(data, step=step)
    return str(info.value)


# -- OP_MSG ------------------------------------------------------------------------------------

FIND = {"find": "users", "filter": {"age": {"$gt": 3}}, "limit": 10, "comment": "c1", "$db": "app"}


def test_op_msg_request_summary():
    message = decode_one(op_msg(FIND, request_id=42, response_to=0))
    assert isinstance(message, OpMsg)
    assert (message.request_id, message.response_to, message.op_code) == (42, 0, OpCode.MSG)
    assert message.message_length == message.wire_size
    assert message.compressor is None
    assert (message.command, message.collection, message.database, message.comment) == (
        "find", "users", "app", "c1",
    )  # fmt: skip
    assert message.summary.size == len(doc(FIND))
    assert not (message.checksum_present or message.more_to_come or message.exhaust_allowed)
    assert message.sequences == () and message.checksum is None
    assert message.document() == FIND
    assert bytes(message.body) == doc(FIND)


def test_op_msg_comment_falls_back_to_dollar_comment_and_non_string_collection_is_none():
    message = decode_one(op_msg({"aggregate": 1, "pipeline": [], "$comment": "legacy", "$db": "admin"}))
    assert isinstance(message, OpMsg)
    assert (message.command, message.collection, message.comment) == ("aggregate", None, "legacy")
    message = decode_one(op_msg({"find": "c", "comment": {"not": "a string"}, "$db": "d"}))
    assert isinstance(message, OpMsg) and message.comment is None


def test_op_msg_get_more_collection_comes_from_its_collection_field():
    message = decode_one(op_msg({"getMore": Int64(77), "collection": "users", "$db": "app"}))
    assert isinstance(message, OpMsg)
    assert (message.command, message.collection) == ("getMore", "users")


def test_op_msg_checksum_is_read_and_skipped():
    message = decode_one(op_msg(FIND, checksum=0xDEADBEEF))
    assert isinstance(message, OpMsg)
    assert message.checksum_present and message.checksum == 0xDEADBEEF
    assert message.command == "find" and message.document() == FIND


def test_op_msg_more_to_come_and_exhaust_allowed():
    reply = decode_one(op_msg({"ok": 1}, flags=0b10))
    request = decode_one(op_msg({"hello": 1, "$db": "admin"}, flags=1 << 16))
    assert isinstance(reply, OpMsg) and isinstance(request, OpMsg)
    assert reply.more_to_come and not reply.exhaust_allowed
    assert request.exhaust_allowed and not request.more_to_come


def test_op_msg_unknown_optional_flag_bit_is_ignored_and_unknown_required_bit_fails():
    assert isinstance(decode_one(op_msg(FIND, flags=1 << 20)), OpMsg)
    assert "required flagBits" in decode_error(op_msg(FIND, flags=1 << 2))


def test_op_msg_insert_with_1000_documents_counts_them_without_decoding(monkeypatch):
    docs = [{"_id": i, "name": f"user{i}", "tags": ["a", "b"]} for i in range(1000)]
    data = op_msg({"insert": "users", "ordered": True, "$db": "app"}, sequences=[("documents", docs)])

    def no_decoding(*args: object, **kwargs: object) -> object:
        raise AssertionError("bulk payload was decoded")

    monkeypatch.setattr(bson, "decode", no_decoding)
    monkeypatch.setattr(bson, "decode_all", no_decoding)
    message = decode_one(data)
    assert isinstance(message, OpMsg)
    assert (message.command, message.collection, message.database) == ("insert", "users", "app")
    size = 4 + len(cstr("documents")) + sum(len(doc(d)) for d in docs)
    assert message.sequences == (DocumentSequence("documents", 1000, size),)


def test_op_msg_sections_in_any_order_and_several_sequences():
    data = op_msg(
        {"update": "c", "$db": "d"},
        sequences=[("updates", [{"q": {}, "u": {"$set": {"a": 1}}}] * 3), ("other", [])],
        sequences_first=True,
    )
    message = decode_one(data)
    assert isinstance(message, OpMsg)
    assert [(s.identifier, s.count) for s in message.sequences] == [("updates", 3), ("other", 0)]
    assert message.command == "update"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (frame(2013, struct.pack("<I", 0)), "OP_MSG: truncated"),
        (frame(2013, struct.pack("<I", 0) + b"\x01" + struct.pack("<i", 6) + b"x\x00"), "no kind-0"),
        (frame(2013, struct.pack("<I", 0) + b"\x00" + doc(FIND) + b"\x00" + doc({})), "more than one kind-0"),
        (frame(2013, struct.pack("<I", 0) + b"\x02" + doc({})), "unknown section kind 2"),
        (op_msg(FIND, sequences=[("documents", []), ("documents", [])]), "repeats"),
        (frame(2013, struct.pack("<I", 0) + b"\x00" + doc(FIND)[:-1]), "does not fit"),
        (frame(2013, struct.pack("<I", 0) + b"\x00" + doc(FIND)[:-1] + b"\x01"), "does not end with NUL"),
        (frame(2013, struct.pack("<I", 1) + bytes(4)), "with checksum: truncated"),
        (frame(2013, struct.pack("<I", 0) + b"\x01" + struct.pack("<i", 99) + b"x\x00"), "does not fit"),
        (frame(2013, struct.pack("<I", 0) + b"\x01" + struct.pack("<i", 6) + b"xy"), "unterminated"),
        (frame(2013, struct.pack("<I", 0) + b"\x01" + struct.pack("<i", 7) + b"x\x00\x01\x02"), "truncated"),
    ],
    ids=[
        "no-sections", "no-body", "two-bodies", "kind-2", "duplicate-identifier", "truncated-body",
        "body-not-nul-terminated", "checksum-without-room", "sequence-overruns", "identifier-unterminated",
        "sequence-partial-doc",
    ],
)  # fmt: skip
def test_op_msg_malformed(data: bytes, error: str):
    assert error in decode_error(data)


# -- reply summaries (OP_MSG replies) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            {
                "cursor": {"firstBatch": [{"_id": i} for i in range(101)], "id": Int64(123), "ns": "a.b"},
                "ok": 1.0,
            },
            {"ok": 1.0, "cursor_id": 123, "num_docs": 101, "errmsg": None, "code": None},
        ),
        (
            {"cursor": {"nextBatch": [{"x": "y" * 1000}] * 7, "id": Int64(0), "ns": "a.b"}, "ok": 1},
            {"ok": 1.0, "cursor_id": 0, "num_docs": 7},
        ),
        (
            {"cursor": {"id": 5, "firstBatch": [1, "two", None, [3], {"x": 4}]}, "n": 99},
            {"cursor_id": 5, "num_docs": 5},
        ),
        ({"n": 5, "ok": True}, {"ok": 1.0, "num_docs": 5, "cursor_id": None}),
        ({"n": Int64(2), "nModified": 2, "ok": 1.0}, {"num_docs": 2}),
        (
            {"ok": 0.0, "errmsg": "ns not found", "code": 26, "codeName": "NamespaceNotFound"},
            {"ok": 0.0, "errmsg": "ns not found", "code": 26, "num_docs": None},
        ),
        ({"ok": 0, "$err": "legacy", "code": 11000.0}, {"ok": 0.0, "errmsg": "legacy", "code": 11000}),
        (
            {"ok": "yes", "code": "E1", "cursor": "no", "n": "many"},
            {"ok": None, "code": None, "num_docs": None},
        ),
        ({"ok": 1, "code": float("nan")}, {"code": None}),
    ],
    ids=[
        "firstBatch",
        "nextBatch",
        "batch-of-scalars",
        "n-bool-ok",
        "n-int64",
        "error",
        "legacy-err",
        "wrong-types",
        "nan-code",
    ],
)
def test_reply_summary(reply: dict[str, object], expected: dict[str, object]):
    message = decode_one(op_msg(reply, response_to=9))
    assert isinstance(message, OpMsg)
    assert message.response_to == 9
    for name, value in expected.items():
        assert getattr(message, name) == value, name


def test_summary_steps_over_every_bson_type():
    everything = {
        "cmd": "coll", "double": 1.5, "string": "s", "doc": {"a": 1}, "array": [1, "2"],
        "binary": bson.Binary(b"\x00\x01", 5), "oid": bson.ObjectId(), "bool": False,
        "date": datetime.datetime(2020, 1, 1), "null": None, "regex": bson.Regex("^a.*", "im"),
        "code": bson.Code("f()"), "code_scope": bson.Code("f(x)", {"x": 1}), "int32": 7,
        "timestamp": bson.Timestamp(1, 2), "int64": Int64(8), "decimal": bson.Decimal128("1.5"),
        "min": bson.MinKey(), "max": bson.MaxKey(), "$db": "last",
    }  # fmt: skip
    message = decode_one(op_msg(everything))
    assert isinstance(message, OpMsg)
    assert (message.command, message.collection, message.database) == ("cmd", "coll", "last")


def test_summary_steps_over_deprecated_bson_types():
    oid = bytes(range(12))
    elements = (
        b"\x0e" + cstr("symbol") + struct.pack("<i", 4) + b"sym\x00"
        + b"\x06" + cstr("undefined")
        + b"\x0c" + cstr("dbpointer") + struct.pack("<i", 2) + b"c\x00" + oid
        + b"\x02" + cstr("$db") + struct.pack("<i", 2) + b"d\x00"
    )  # fmt: skip
    body = struct.pack("<i", 4 + len(elements) + 1) + elements + b"\x00"
    message = decode_one(op_msg(body))
    assert isinstance(message, OpMsg)
    assert (message.command, message.collection, message.database) == ("symbol", None, "d")
    assert message.document()["symbol"] == "sym"


@pytest.mark.parametrize(
    ("raw_body", "error"),
    [
        (b"\x0c\x00\x00\x00\x20k\x00\x01\x02\x03\x04\x00", "unknown BSON element type 0x20"),
        (b"\x0f\x00\x00\x00\x02k\x00\x09\x00\x00\x00ab\x00\x00", "BSON string length 9"),
        (b"\x0c\x00\x00\x00\x02k\x00\x01\x00\x00\x00\x00", "truncated BSON string"),
        (b"\x0b\x00\x00\x00\x10k\x00\x01\x00\x00\x00", "overruns"),
        (b"\x08\x00\x00\x00\x10kk\x00", "unterminated BSON key"),
        (b"\x0e\x00\x00\x00\x02\xff\x00\x02\x00\x00\x00a\x00\x00", "invalid UTF-8"),
        (b"\x0e\x00\x00\x00\x02k\x00\x02\x00\x00\x00\xff\x00\x00", "invalid UTF-8"),
        (b"\x0e\x00\x00\x00\x03k\x00\x09\x00\x00\x00\x00\x00\x00", "does not fit"),
        (b"\x0c\x00\x00\x00\x0bk\x00ab\x00c\x00", "unterminated BSON regex"),
        (b"\x0d\x00\x00\x00\x05k\x00\xff\xff\xff\xff\x00\x00", "invalid BSON binary"),
        (b"\x10\x00\x00\x00\x0fk\x00\x05\x00\x00\x00\x00\x00\x00\x00\x00", "invalid BSON code with scope"),
    ],
    ids=[
        "unknown-type", "string-overrun", "string-truncated", "int-overrun", "key-unterminated",
        "key-not-utf8", "string-not-utf8", "nested-doc-overrun", "regex-unterminated", "binary-negative",
        "code-scope-short",
    ],
)  # fmt: skip
def test_garbage_bson_in_a_body(raw_body: bytes, error: str):
    assert error in decode_error(op_msg(raw_body))


def test_nested_garbage_is_not_checked_until_the_document_is_decoded():
    bad_filter = b"\x0b\x00\x00\x00\x20x\x00\x00\x00\x00\x00"  # an element of unknown type 0x20
    elements = (
        b"\x02" + cstr("find") + struct.pack("<i", 2) + b"c\x00" + b"\x03" + cstr("filter") + bad_filter
    )
    body = struct.pack("<i", 4 + len(elements) + 1) + elements + b"\x00"  # {find: "c", filter: <garbage>}
    message = decode_one(op_msg(body))
    assert isinstance(message, OpMsg) and message.command == "find"
    with pytest.raises(MongoProtocolError, match="malformed BSON"):
        message.document()


# -- first_element (the O(1) raw reader) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"find": "users", "filter": {}}, ("find", "users")),
        ({"ping": 1}, ("ping", None)),
        ({}, ("", None)),
        ({"é": "ü"}, ("é", "ü")),
        ({"k": ""}, ("k", "")),
    ],
)
def test_first_element(value: dict[str, object], expected: tuple[str, str | None]):
    assert first_element(doc(value)) == expected
    assert first_element(b"xyz" + doc(value), 3) == expected


def test_first_element_rejects_bad_framing():
    with pytest.raises(MongoProtocolError):
        first_element(doc({"a": "b"})[:-1])


# -- OP_QUERY / OP_REPLY -------------------------------------------------------------------------


def test_op_query_fields_and_flags():
    query = {"$query": {"_id": 5}, "$comment": "callsite", "$maxTimeMS": 100}
    data = op_query("app.users.archive", query, flags=0b1111_1110, skip=3, limit=10, fields={"a": 1})
    message = decode_one(data)
    assert isinstance(message, OpQuery)
    assert (message.full_collection_name, message.database, message.collection) == (
        "app.users.archive", "app", "users.archive",
    )  # fmt: skip
    assert (message.number_to_skip, message.number_to_return, message.command) == (3, 10, None)
    assert message.comment == "callsite"
    assert all(
        (message.tailable_cursor, message.slave_ok, message.oplog_replay, message.no_cursor_timeout,
         message.await_data, message.exhaust, message.partial)
    )  # fmt: skip
    assert message.document() == query
    assert message.return_fields_selector is not None
    assert bson.decode(message.return_fields_selector) == {"a": 1}


def test_op_query_command_name_on_dollar_cmd_including_wrapped_in_dollar_query():
    hello = decode_one(op_query("admin.$cmd", {"isMaster": 1, "client": {"driver": {"name": "x"}}}))
    wrapped = decode_one(
        op_query("admin.$cmd", {"$query": {"ismaster": 1}, "$readPreference": {"mode": "x"}})
    )
    no_dot = decode_one(op_query("nodot", {}))
    assert isinstance(hello, OpQuery) and isinstance(wrapped, OpQuery) and isinstance(no_dot, OpQuery)
    assert (hello.command, hello.collection, hello.flags) == ("isMaster", "$cmd", 0)
    assert wrapped.command == "ismaster"
    assert (no_dot.database, no_dot.collection, no_dot.command) == ("nodot", None, None)
    assert no_dot.return_fields_selector is None


def test_op_query_malformed():
    good = op_query("a.b", {"x": 1}, fields={"y": 1})
    assert "trailing" in decode_error(frame(2004, good[16:] + b"\x00"))
    assert "unterminated cstring" in decode_error(frame(2004, struct.pack("<i", 0) + b"a.b"))
    assert "invalid UTF-8" in decode_error(
        frame(2004, struct.pack("<i", 0) + b"\xff\x00" + bytes(8) + doc({}))
    )
    assert "OP_QUERY: truncated" in decode_error(frame(2004, struct.pack("<i", 0) + b"a.b\x00\x01"))


def test_op_reply_fields_flags_and_first_document_summary():
    docs = [{"ok": 1.0, "ismaster": True, "maxWireVersion": 17}, {"x": 1}]
    message = decode_one(op_reply(docs, flags=0b1111, cursor_id=99, starting_from=4, response_to=7))
    assert isinstance(message, OpReply)
    assert (message.response_to, message.cursor_id, message.starting_from) == (7, 99, 4)
    assert message.number_returned == message.num_docs == 2
    assert message.cursor_not_found and message.query_failure
    assert message.shard_config_stale and message.await_capable
    assert message.summary is not None and message.summary.ok == 1.0
    assert message.documents_size == sum(len(doc(d)) for d in docs)
    assert message.decode_documents() == docs


def test_op_reply_query_failure_and_empty():
    failure = decode_one(op_reply([{"$err": "bad query", "code": 2}], flags=0b10))
    empty = decode_one(op_reply([], flags=0b1, cursor_id=5))
    assert isinstance(failure, OpReply) and isinstance(empty, OpReply)
    assert failure.query_failure and not failure.cursor_not_found
    assert failure.summary is not None and (failure.summary.errmsg, failure.summary.code) == ("bad query", 2)
    assert empty.cursor_not_found and empty.summary is None and empty.num_docs == 0


def test_op_reply_number_returned_must_match():
    assert "numberReturned is 3 but 2" in decode_error(op_reply([{}, {}], number_returned=3))
    assert "OP_REPLY: truncated" in decode_error(frame(1, bytes(19)))


# -- legacy writes and cursors -------------------------------------------------------------------


def test_op_insert_counts_documents():
    docs = [{"_id": i} for i in range(50)]
    body = struct.pack("<i", 1) + cstr("app.users") + b"".join(doc(d) for d in docs)
    message = decode_one(frame(2002, body))
    assert isinstance(message, OpInsert)
    assert (message.database, message.collection, message.document_count) == ("app", "users", 50)
    assert message.continue_on_error and message.documents_size == len(body) - 4 - len(cstr("app.users"))


def test_op_update():
    body = bytes(4) + cstr("app.users") + struct.pack("<i", 0b11) + doc({"_id": 1}) + doc({"$set": {"a": 2}})
    message = decode_one(frame(2001, body))
    assert isinstance(message, OpUpdate)
    assert message.upsert and message.multi_update and message.collection == "users"
    assert bson.decode(message.selector) == {"_id": 1}
    assert bson.decode(message.update) == {"$set": {"a": 2}}
    assert "trailing" in decode_error(frame(2001, body + b"\x00"))


def test_op_delete():
    body = bytes(4) + cstr("app.users") + struct.pack("<i", 1) + doc({"_id": 1})
    message = decode_one(frame(2006, body))
    assert isinstance(message, OpDelete)
    assert message.single_remove and message.full_collection_name == "app.users"
    assert bson.decode(message.selector) == {"_id": 1}


def test_op_get_more():
    body = bytes(4) + cstr("app.users") + struct.pack("<iq", 100, 2**40)
    message = decode_one(frame(2005, body))
    assert isinstance(message, OpGetMore)
    assert (message.number_to_return, message.cursor_id, message.collection) == (100, 2**40, "users")
    assert "trailing" in decode_error(frame(2005, body[:-1]))


def test_op_kill_cursors():
    message = decode_one(frame(2007, struct.pack("<iiqq", 0, 2, 11, -12)))
    assert isinstance(message, OpKillCursors) and message.cursor_ids == (11, -12)
    assert "does not match" in decode_error(frame(2007, struct.pack("<iiq", 0, 2, 11)))
    assert "does not match" in decode_error(frame(2007, struct.pack("<ii", 0, -1)))


def test_op_command_and_command_reply():
    body = cstr("app") + cstr("find") + doc({}) + doc({"find": "users"}) + doc({"a": 1}) + doc({"b": 2})
    command = decode_one(frame(2010, body))
    reply = decode_one(frame(2011, doc({}) + doc({"ok": 1.0})))
    assert isinstance(command, OpCommand) and isinstance(reply, OpCommandReply)
    assert (command.database, command.command_name, command.input_doc_count) == ("app", "find", 2)
    assert bson.decode(command.command_args) == {"find": "users"}
    assert reply.output_doc_count == 0 and bson.decode(reply.command_reply) == {"ok": 1.0}
    assert "commandReply" in decode_error(frame(2011, doc({})))


# -- OP_COMPRESSED -------------------------------------------------------------------------------


def _snappy() -> Callable[[bytes], bytes]:
    snappy = pytest.importorskip("snappy")
    return snappy.compress  # type: ignore[no-any-return]


def _zstd() -> Callable[[bytes], bytes]:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress  # type: ignore[no-any-return]


COMPRESSORS: dict[str, tuple[Compressor, Callable[[], Callable[[bytes], bytes]]]] = {
    "noop": (Compressor.NOOP, lambda: bytes),
    "zlib": (Compressor.ZLIB, lambda: zlib.compress),
    "snappy": (Compressor.SNAPPY, _snappy),
    "zstd": (Compressor.ZSTD, _zstd),
}


@pytest.mark.parametrize("name", COMPRESSORS)
def test_op_compressed_decodes_the_inner_message(name: str):
    compressor, factory = COMPRESSORS[name]
    compress = factory()
    inner = op_msg(FIND, request_id=5, response_to=3)
    data = op_compressed(inner, compressor, compress)
    message = decode_one(data)
    assert isinstance(message, OpMsg)
    assert (message.request_id, message.response_to, message.op_code) == (5, 3, OpCode.MSG)
    assert message.compressor is compressor
    assert message.message_length == len(inner) and message.wire_size == len(data)
    assert (message.command, message.collection, message.document()) == ("find", "users", FIND)
    # a legacy opcode inside
    reply = decode_one(op_compressed(op_reply([{"ok": 1}]), compressor, compress))
    assert isinstance(reply, OpReply) and reply.number_returned == 1 and reply.compressor is compressor


def test_op_compressed_left_compressed_when_asked_or_unsupported(monkeypatch):
    data = op_compressed(op_msg(FIND, request_id=5), Compressor.ZLIB, zlib.compress)
    message = decode_one(data, decompress=False)
    assert message == Compressed(len(data), 5, 0, OpCode.COMPRESSED, len(data), Compressor.ZLIB, OpCode.MSG,
                                 len(op_msg(FIND)) - 16)  # fmt: skip
    monkeypatch.setattr("filters.mongo_proxy.frames.SUPPORTED_COMPRESSORS", frozenset({Compressor.NOOP}))
    assert isinstance(decode_one(data), Compressed)


def test_op_compressed_malformed():
    inner = op_msg(FIND)
    body = inner[16:]
    good = zlib.compress(body)

    def compressed(op: int, size: int, cid: int, payload: bytes) -> bytes:
        return frame(2012, struct.pack("<iiB", op, size, cid) + payload)

    cases = {
        "shorter than its prefix": frame(2012, bytes(8)),
        "invalid originalOpcode 2012": compressed(2012, len(body), 2, good),
        "invalid originalOpcode 9": compressed(9, len(body), 2, good),
        "uncompressedSize 0 is out of range": compressed(2013, 0, 2, good),
        "uncompressedSize 48000000 is out of range": compressed(2013, MAX_MESSAGE_SIZE, 2, good),
        "unknown compressorId 4": compressed(2013, len(body), 4, good),
        "does not inflate to": compressed(2013, len(body) - 1, 2, good),
        "zlib payload inflates to": compressed(2013, len(body) + 1, 2, good),
        "zlib payload is corrupt": compressed(2013, len(body), 2, b"garbage"),
        "noop payload": compressed(2013, len(body) + 1, 0, body),
        "OP_MSG body": compressed(2013, len(body), 0, body[:5] + bytes(len(body) - 5)),
    }
    for error, data in cases.items():
        assert error in decode_error(data), error


def test_op_compressed_refuses_a_snappy_or_zstd_size_mismatch_before_inflating():
    body = op_msg(FIND)[16:]
    header = struct.pack("<iiB", 2013, len(body), 1)
    if Compressor.SNAPPY in SUPPORTED_COMPRESSORS:
        bomb = _snappy()(body + bytes(10_000_000))
        assert f"declares {len(body) + 10_000_000} bytes" in decode_error(frame(2012, header + bomb))
        assert len(body) < 128  # a one-byte varint
        assert "snappy payload is corrupt" in decode_error(
            frame(2012, header + bytes([len(body)]) + b"\xff" * 9)
        )
        assert "no valid length header" in decode_error(frame(2012, header + b"\xff\xff"))
    if Compressor.ZSTD in SUPPORTED_COMPRESSORS:
        header = struct.pack("<iiB", 2013, len(body), 3)
        big = _zstd()(body + b"x")
        assert "zstd frame declares" in decode_error(frame(2012, header + big))
        assert "zstd payload is corrupt" in decode_error(frame(2012, header + b"garbage"))


# -- framing errors, fail-fast and the failed state ----------------------------------------------


def test_length_out_of_range_fails_on_the_first_four_bytes():
    for length in (15, 0, -1, MAX_MESSAGE_SIZE + 1, 2**31 - 1):
        decoder = MongoDecoder()
        decoder.feed(struct.pack("<i", length))
        with pytest.raises(MongoProtocolError, match="messageLength"):
            decoder.next_message()
        assert decoder.buffered == 0


def test_maximum_length_is_accepted_and_only_buffered():
    decoder = MongoDecoder()
    decoder.feed(struct.pack("<iiii", MAX_MESSAGE_SIZE, 1, 0, 2013) + bytes(1000))
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == 1016


def test_unknown_opcode_fails_on_the_header_before_the_body():
    decoder = MongoDecoder()
    decoder.feed(struct.pack("<iiii", 1_000_000, 1, 0, 2003))
    with pytest.raises(MongoProtocolError, match="unknown opCode 2003"):
        decoder.next_message()


@pytest.mark.parametrize(
    "record",
    ["1603010500", "1603030100"],  # TLS record header: type 22, version, length (big-endian)
    ids=["length-too-big", "opcode-unknown"],  # how the first 4 bytes read as a messageLength
)
def test_tls_client_hello_is_refused_with_a_hint(record: str):
    hello = bytes.fromhex(record) + bytes.fromhex("01000200fc0303") + bytes(range(32)) + bytes(200)
    assert "looks like a TLS handshake" in decode_error(hello)
    assert "looks like a TLS handshake" in decode_error(hello, step=1)


@pytest.mark.parametrize(
    "text", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /x HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n"]
)
def test_http_is_refused_with_a_hint(text: bytes):
    assert "looks like HTTP" in decode_error(text)


def test_a_failed_decoder_stays_failed_and_holds_nothing():
    decoder = MongoDecoder()
    decoder.feed(op_msg(FIND) + struct.pack("<iiii", 10, 0, 0, 0) + bytes(100))
    assert isinstance(decoder.next_message(), OpMsg)
    with pytest.raises(MongoProtocolError) as first:
        decoder.next_message()
    assert decoder.failed and decoder.buffered == 0
    decoder.feed(op_msg(FIND))
    assert decoder.buffered == 0
    with pytest.raises(MongoProtocolError) as again:
        decoder.next_message()
    assert str(again.value) == str(first.value)


def test_error_inside_a_frame_fails_the_decoder():
    decoder = MongoDecoder()
    decoder.feed(op_msg(FIND, flags=1 << 3) + op_msg(FIND))
    with pytest.raises(MongoProtocolError):
        decoder.next_message()
    assert decoder.failed and decoder.buffered == 0


def test_buffer_holds_at_most_the_unfinished_message():
    data = op_msg(FIND) * 3
    decoder = MongoDecoder()
    decoder.feed(data + data[:30])
    assert [type(decoder.next_message()) for _ in range(3)] == [OpMsg] * 3
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == 30
    assert not decoder.failed
    assert repr(NEED_DATA) == "NEED_DATA"


# -- real driver traffic (captured by tests/fixtures/mongo/capture.py) ---------------------------


def test_captured_pymongo_session():
    requests, left = decode((FIXTURES / "session_client.bin").read_bytes())
    replies, right = decode((FIXTURES / "session_server.bin").read_bytes(), step=7)
    assert left == right == 0
    assert all(isinstance(m, OpMsg) for m in requests + replies)
    req = [m for m in requests if isinstance(m, OpMsg)]
    rep = [m for m in replies if isinstance(m, OpMsg)]
    assert [(m.command, m.collection, m.database) for m in req] == [
        ("ismaster", None, "admin"),
        ("find", "users", "app"),
        ("getMore", "users", "app"),
        ("insert", "users", "app"),
        ("bogus", None, "app"),
    ]
    assert req[1].comment == "findUsers"
    assert [(s.identifier, s.count) for s in req[3].sequences] == [("documents", 1000)]
    assert [r.response_to for r in rep] == [m.request_id for m in req]
    assert [(r.ok, r.num_docs, r.cursor_id) for r in rep[1:4]] == [
        (1.0, 2, 77),
        (1.0, 1, 0),
        (1.0, 1000, None),
    ]
    assert (rep[4].ok, rep[4].code, rep[4].errmsg) == (0.0, 59, "no such command: 'bogus'")
