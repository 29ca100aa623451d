"""Properties of MongoDecoder: only messages or MongoProtocolError, split-independence, round-trips,
and its OP_MSG summaries (the fast path) agreeing with the full decoder."""

from __future__ import annotations

import contextlib
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import bson
from bson import Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters.mongo_proxy.codec import NEED_DATA, MongoDecoder
from filters.mongo_proxy.fastpath import REPLIES, REQUESTS, SummaryReader
from filters.mongo_proxy.messages import (
    Compressor,
    Message,
    MongoProtocolError,
    OpGetMore,
    OpMsg,
    OpQuery,
    OpReply,
)
from filters.mongo_proxy.rawbson import first_element

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- documents and frames ------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)  # cstrings
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(allow_nan=False),
    names,
    st.binary(max_size=8),  # bytes: bson.Binary subtype 0 decodes back to bytes
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=3)),
    max_leaves=6,
)
documents = st.dictionaries(names, values, max_size=5)
int32 = st.integers(-(2**31), 2**31 - 1)


def frame(op: int, body: bytes, request_id: int, response_to: int) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, op) + body


@dataclass(frozen=True)
class Expected:
    """What a generated message must decode to."""

    data: bytes
    type: type[Message]
    fields: tuple[tuple[str, object], ...]


@st.composite
def op_msgs(draw: st.DrawFn) -> Expected:
    command = draw(names.filter(bool))
    body: dict[str, object] = {
        command: draw(names | st.integers(0, 5)),
        **draw(documents),
        "$db": draw(names),
    }
    if draw(st.booleans()):
        body[draw(st.sampled_from(["comment", "$comment"]))] = draw(names)
    flags = draw(st.sampled_from([0, 1 << 1, 1 << 16, (1 << 16) | (1 << 1)]))
    sequences = draw(
        st.lists(st.tuples(names, st.lists(documents, max_size=4)), max_size=2, unique_by=lambda s: s[0])
    )
    checksum = draw(st.none() | st.integers(0, 2**32 - 1))
    payload = b"\x00" + bson.encode(body)
    for identifier, docs in sequences:
        section = identifier.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    if checksum is not None:
        flags |= 1
    payload = struct.pack("<I", flags) + payload + (b"" if checksum is None else struct.pack("<I", checksum))
    request_id, response_to = draw(int32), draw(int32)
    first_key = next(iter(body))  # bson keeps insertion order
    collection: object = body[first_key]
    if first_key == "getMore" and not isinstance(collection, str):
        collection = body.get("collection")
    comment = body.get("comment")
    if not isinstance(comment, str):
        comment = body.get("$comment")
    fields = (
        ("request_id", request_id),
        ("response_to", response_to),
        ("flag_bits", flags),
        ("checksum", checksum),
        ("command", first_key),
        ("collection", collection if isinstance(collection, str) else None),
        ("database", body["$db"]),
        ("comment", comment if isinstance(comment, str) else None),
        ("sequence_counts", tuple((i, len(d)) for i, d in sequences)),
        ("document", body),
    )
    return Expected(frame(2013, payload, request_id, response_to), OpMsg, fields)


@st.composite
def op_queries(draw: st.DrawFn) -> Expected:
    name = draw(names)
    query = draw(documents)
    flags, skip, limit = draw(int32), draw(int32), draw(int32)
    body = (
        struct.pack("<i", flags)
        + name.encode()
        + b"\x00"
        + struct.pack("<ii", skip, limit)
        + bson.encode(query)
    )
    request_id = draw(int32)
    fields = (("request_id", request_id), ("full_collection_name", name), ("flags", flags),
              ("number_to_skip", skip), ("number_to_return", limit), ("document", query))  # fmt: skip
    return Expected(frame(2004, body, request_id, 0), OpQuery, fields)


@st.composite
def op_replies(draw: st.DrawFn) -> Expected:
    docs = draw(st.lists(documents, max_size=4))
    flags, cursor_id, start = draw(int32), draw(st.integers(-(2**63), 2**63 - 1)), draw(int32)
    body = struct.pack("<iqii", flags, cursor_id, start, len(docs)) + b"".join(bson.encode(d) for d in docs)
    response_to = draw(int32)
    fields = (("response_to", response_to), ("response_flags", flags), ("cursor_id", cursor_id),
              ("starting_from", start), ("number_returned", len(docs)), ("decoded", docs))  # fmt: skip
    return Expected(frame(1, body, 0, response_to), OpReply, fields)


@st.composite
def op_get_mores(draw: st.DrawFn) -> Expected:
    name, count, cursor = draw(names), draw(int32), draw(st.integers(-(2**63), 2**63 - 1))
    body = bytes(4) + name.encode() + b"\x00" + struct.pack("<iq", count, cursor)
    fields = (("full_collection_name", name), ("number_to_return", count), ("cursor_id", cursor))
    return Expected(frame(2005, body, 1, 0), OpGetMore, fields)


@st.composite
def compressed(draw: st.DrawFn, inner: st.SearchStrategy[Expected]) -> Expected:
    message = draw(inner)
    _, request_id, response_to, op = struct.unpack_from("<iiii", message.data)
    body = message.data[16:]
    compressor = draw(st.sampled_from([Compressor.NOOP, Compressor.ZLIB]))
    payload = body if compressor is Compressor.NOOP else zlib.compress(body)
    data = frame(2012, struct.pack("<iiB", op, len(body), compressor) + payload, request_id, response_to)
    fields = (*message.fields, ("compressor", compressor), ("message_length", len(message.data)))
    return Expected(data, message.type, fields)


plain = st.one_of(op_msgs(), op_queries(), op_replies(), op_get_mores())
messages = st.one_of(plain, compressed(plain))


def field(message: Message, name: str) -> object:
    if name == "sequence_counts":
        assert isinstance(message, OpMsg)
        return tuple((s.identifier, s.count) for s in message.sequences)
    if name == "document":
        assert isinstance(message, OpMsg | OpQuery)
        return message.document()
    if name == "decoded":
        assert isinstance(message, OpReply)
        return message.decode_documents()
    return getattr(message, name)


# -- running the decoder -------------------------------------------------------------------------


def run(chunks: list[bytes]) -> tuple[list[Message], str | None, int]:
    """Feed chunks, draining after each: (messages, protocol error or None, bytes left buffered)."""
    decoder = MongoDecoder()
    out: list[Message] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (message := decoder.next_message()) is not NEED_DATA:
                out.append(message)
    except MongoProtocolError as exc:
        return out, str(exc), decoder.buffered
    return out, None, decoder.buffered


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid traffic with a few bytes flipped, cut out or inserted: garbage that gets past framing."""
    data = bytearray(b"".join(m.data for m in draw(st.lists(messages, min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            break
    return bytes(data)


# -- properties ----------------------------------------------------------------------------------


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated()), st.lists(st.integers(0, 10_000), max_size=6))
def test_any_bytes_yield_messages_or_a_protocol_error(data: bytes, cuts: list[int]):
    out, error, left = run(split(data, cuts))
    if error is not None:
        assert left == 0
    for message in out:  # on-demand decoding fails only with the protocol error too
        try:
            if isinstance(message, OpMsg | OpQuery):
                message.document()
            elif isinstance(message, OpReply):
                message.decode_documents()
        except MongoProtocolError:
            pass


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated()), st.lists(st.integers(0, 10_000), max_size=8))
def test_results_do_not_depend_on_how_input_is_split(data: bytes, cuts: list[int]):
    whole = run([data])
    assert run(split(data, cuts)) == whole
    assert run([data[i : i + 1] for i in range(len(data))]) == whole


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=6))
def test_valid_messages_decode_to_what_was_encoded(expected: list[Expected], cuts: list[int]):
    data = b"".join(e.data for e in expected)
    out, error, left = run(split(data, cuts))
    assert (error, left) == (None, 0)
    assert len(out) == len(expected)
    for message, want in zip(out, expected, strict=True):
        assert type(message) is want.type
        assert message.wire_size == len(want.data)
        for name, value in want.fields:
            assert field(message, name) == value, name


@SETTINGS
@given(documents)
def test_first_element_agrees_with_bson(document: dict[str, object]):
    raw = bson.encode(document)
    key, value = first_element(raw)
    if not document:
        assert (key, value) == ("", None)
    else:
        first = next(iter(bson.decode(raw).items()))
        assert key == first[0]
        assert value == (first[1] if isinstance(first[1], str) else None)


@SETTINGS
@given(st.binary(min_size=5, max_size=64))
def test_first_element_on_garbage_raises_only_protocol_errors(raw: bytes):
    with contextlib.suppress(MongoProtocolError):
        first_element(raw)


# -- the OP_MSG fast path (MongoDecoder.summaries) agrees with the full decoder ---------------------

id_values = st.one_of(scalars, st.dictionaries(st.sampled_from(["$in", "$gt"]), values, max_size=1),
                      st.builds(bson.ObjectId))
option_values = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), names, st.none(),
                          st.integers(-(2**63), 2**63 - 1).map(Int64))


@st.composite
def find_commands(draw: st.DrawFn) -> bytes:
    """A find as drivers send it (filter second, $db last) or shuffled, with any of Envoy's fields."""
    fields: list[tuple[str, object]] = []
    if draw(st.booleans()):
        query = draw(documents)
        if draw(st.booleans()):  # an _id first (a point lookup), or anywhere
            id_first = draw(st.booleans())
            query = {"_id": draw(id_values), **query} if id_first else {**query, "_id": draw(id_values)}
        fields.append(("filter", query))
    for key in draw(st.lists(st.sampled_from(["maxTimeMS", "tailable", "awaitData", "noCursorTimeout",
                                              "comment", "$comment"]), unique=True)):
        fields.append((key, draw(option_values)))
    fields += list(draw(documents).items())
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    body = {"find": draw(names | st.integers(0, 3)), **dict(fields)}
    if draw(st.booleans()):
        body["$db"] = draw(names)
    if draw(st.booleans()):
        body = {**body, "lsid": {"id": bson.Binary(draw(st.binary(min_size=16, max_size=16)), 4)}}
    payload = struct.pack("<I", draw(st.sampled_from([0, 2, 1 << 16]))) + b"\x00" + bson.encode(body)
    return frame(2013, payload, draw(int32), 0)


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    """A reply shaped as servers send them (cursor, n or ok first), or not, with extra fields."""
    batch = draw(st.lists(documents, max_size=12) | st.lists(values, max_size=4))
    cursor: dict[str, object] = {draw(st.sampled_from(["firstBatch", "nextBatch"])): batch,
                                 "id": draw(st.integers(-(2**63), 2**63 - 1).map(Int64) | st.integers(0, 9)),
                                 "ns": draw(names)}
    if draw(st.booleans()):
        cursor = dict(draw(st.permutations(list(cursor.items()))))
    first = draw(st.sampled_from(["cursor", "n", "ok", "other"]))
    body: dict[str, object] = {}
    if first == "cursor":
        body["cursor"] = cursor
    elif first == "n":
        body["n"] = draw(st.integers(0, 100) | st.floats(allow_nan=False))
    body["ok"] = draw(st.sampled_from([1.0, 1, 0.0, 0, True]) | option_values)
    if draw(st.booleans()):
        body["errmsg"], body["code"] = draw(names), draw(st.integers(0, 100))
    body.update(draw(documents))
    payload = struct.pack("<I", draw(st.sampled_from([0, 2]))) + b"\x00" + bson.encode(body)
    return frame(2013, payload, draw(int32), draw(int32))


def full_summaries(data: bytes, reader: SummaryReader[Any]) -> tuple[list[object], str | None, int]:
    out, error, left = run([data])
    return [reader.convert(m) if isinstance(m, OpMsg) else m for m in out], error, left


def run_summaries(chunks: list[bytes], reader: SummaryReader[Any]) -> tuple[list[object], str | None, int]:
    decoder = MongoDecoder(summaries=reader)
    out: list[object] = []
    for chunk in chunks:
        out += decoder.summaries(chunk)
    return out, decoder.error, decoder.buffered


@SETTINGS
@given(st.lists(st.one_of(messages, find_commands(), replies()), min_size=1, max_size=4),
       st.lists(st.integers(0, 10_000), max_size=6), st.sampled_from([REQUESTS, REPLIES]))
def test_summaries_agree_with_the_full_decoder(frames: list[Any], cuts: list[int], reader: Any) -> None:
    data = b"".join(f.data if isinstance(f, Expected) else f for f in frames)
    expected = full_summaries(data, reader)
    assert expected[1] is None
    assert run_summaries([data], reader) == expected
    assert run_summaries(split(data, cuts), reader) == expected


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated()), st.lists(st.integers(0, 10_000), max_size=8),
       st.sampled_from([REQUESTS, REPLIES]))
def test_summaries_of_any_bytes_do_not_depend_on_the_split(data: bytes, cuts: list[int], reader: Any) -> None:
    whole = run_summaries([data], reader)  # never raises: a protocol error ends the list
    assert run_summaries(split(data, cuts), reader) == whole
    assert run_summaries([data[i : i + 1] for i in range(len(data))], reader) == whole
    if whole[1] is not None:
        assert whole[2] == 0
