"""One complete Mongo wire message (a frame) decoded in full: the opcodes' bodies and
OP_COMPRESSED, sans-IO.

``codec.MongoDecoder`` finds the frames and calls ``decode_frame`` for every message it must
decode in full (``fastpath`` reads the common OP_MSG without it). Layouts and invariants are in
``codec``'s docstring; a malformed body raises ``MongoProtocolError``.
"""

from __future__ import annotations

import importlib
import struct
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Final

from filters.mongo_proxy.messages import (
    MSG_CHECKSUM_PRESENT,
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
from filters.mongo_proxy.rawbson import (
    Buffer,
    check_document,
    count_documents,
    first_element,
    read_cstring,
    summarize,
)

# MongoDB's maxMessageSizeBytes is 48,000,000 (decimal, not 48 MiB): no server sends or accepts a
# larger message, so anything bigger is not MongoDB and is refused before its body is buffered.
MAX_MESSAGE_SIZE: Final = 48_000_000
HEADER_SIZE: Final = 16

# OP_MSG flagBits 0-15 are "required": a parser must fail on one it does not know (0 and 1 are
# defined). Bits 16-31 are optional and ignored when unknown.
_MSG_UNKNOWN_REQUIRED_BITS: Final = 0xFFFF & ~0b11

_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_I64 = struct.Struct("<q").unpack_from
_HEADER = struct.Struct("<iiii").unpack_from
_REPLY = struct.Struct("<iqii").unpack_from  # responseFlags, cursorID, startingFrom, numberReturned
_COMPRESSED = struct.Struct("<iiB").unpack_from  # originalOpcode, uncompressedSize, compressorId


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_snappy = _optional_module("snappy")  # python-snappy
_zstd = _optional_module("zstandard")

SUPPORTED_COMPRESSORS: Final[frozenset[Compressor]] = frozenset(
    c
    for c, available in (
        (Compressor.NOOP, True),
        (Compressor.ZLIB, True),
        (Compressor.SNAPPY, _snappy is not None),
        (Compressor.ZSTD, _zstd is not None),
    )
    if available
)
"""Compressors whose OP_COMPRESSED messages are decompressed and decoded; others stay ``Compressed``."""


# -- frames --------------------------------------------------------------------------------------

# message_length, request_id, response_to, op_code, wire_size, compressor: the ``Message`` fields.
_Head = tuple[int, int, int, OpCode, int, Compressor | None]
_OPCODES: Final = {int(op): op for op in OpCode}
_COMPRESSORS: Final = {int(c): c for c in Compressor}
_COMPRESSED_PREFIX: Final = 9


def decode_frame(frame: Buffer, decompress: bool) -> Message:
    length, request_id, response_to, op = _HEADER(frame, 0)
    op_code = _OPCODES[op]  # checked by the caller
    if op_code is OpCode.COMPRESSED:
        return _decode_compressed(frame, request_id, response_to, decompress)
    head: _Head = (length, request_id, response_to, op_code, length, None)
    return _PARSERS[op_code](frame, HEADER_SIZE, length, head)


def _decode_compressed(frame: Buffer, request_id: int, response_to: int, decompress: bool) -> Message:
    wire_size = len(frame)
    if wire_size < HEADER_SIZE + _COMPRESSED_PREFIX:
        raise MongoProtocolError(f"OP_COMPRESSED of {wire_size} bytes is shorter than its prefix")
    original, size, compressor_id = _COMPRESSED(frame, HEADER_SIZE)
    op_code = _OPCODES.get(original)
    if op_code is None or op_code is OpCode.COMPRESSED:
        raise MongoProtocolError(f"OP_COMPRESSED wraps invalid originalOpcode {original}")
    if not 0 < size <= MAX_MESSAGE_SIZE - HEADER_SIZE:  # bounds what decompression may allocate
        raise MongoProtocolError(f"OP_COMPRESSED uncompressedSize {size} is out of range")
    compressor = _COMPRESSORS.get(compressor_id)
    if compressor is None:
        raise MongoProtocolError(f"OP_COMPRESSED has unknown compressorId {compressor_id}")
    if not decompress or compressor not in SUPPORTED_COMPRESSORS:
        return Compressed(
            wire_size, request_id, response_to, OpCode.COMPRESSED, wire_size, compressor, op_code, size
        )
    head: _Head = (size + HEADER_SIZE, request_id, response_to, op_code, wire_size, compressor)
    start = HEADER_SIZE + _COMPRESSED_PREFIX
    if compressor is Compressor.NOOP:  # parse in place
        if wire_size - start != size:
            raise MongoProtocolError(f"OP_COMPRESSED noop payload is {wire_size - start} bytes, not {size}")
        return _PARSERS[op_code](frame, start, wire_size, head)
    body = _inflate(compressor, memoryview(frame)[start:], size)
    return _PARSERS[op_code](body, 0, size, head)


# What the decompressors raise on corrupt input.
_INFLATE_ERRORS: Final[tuple[type[Exception], ...]] = (
    zlib.error,
    *((_snappy.UncompressError,) if _snappy is not None else ()),
    *((_zstd.ZstdError,) if _zstd is not None else ()),
)


def _inflate(compressor: Compressor, data: memoryview, size: int) -> bytes:
    """Decompress ``data`` to exactly ``size`` bytes, never allocating much more than ``size``."""
    name = compressor.name.lower()
    try:
        if compressor is Compressor.ZLIB:
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, size)
            if inflater.unconsumed_tail or not inflater.eof:
                raise MongoProtocolError(f"OP_COMPRESSED zlib stream does not inflate to {size} bytes")
        elif compressor is Compressor.SNAPPY:
            assert _snappy is not None
            declared = _snappy_length(data)  # snappy allocates what its header declares: check first
            if declared != size:
                raise MongoProtocolError(f"OP_COMPRESSED snappy block declares {declared} bytes, not {size}")
            out = _snappy.uncompress(data)
        else:
            assert _zstd is not None
            declared = _zstd.frame_content_size(data)  # -1: not in the frame header
            if declared not in (-1, size):
                raise MongoProtocolError(f"OP_COMPRESSED zstd frame declares {declared} bytes, not {size}")
            out = _zstd.ZstdDecompressor().decompress(data, max_output_size=size)
    except MongoProtocolError:
        raise
    except _INFLATE_ERRORS as exc:
        raise MongoProtocolError(f"OP_COMPRESSED {name} payload is corrupt: {exc}") from None
    if len(out) != size:
        raise MongoProtocolError(f"OP_COMPRESSED {name} payload inflates to {len(out)} bytes, not {size}")
    return bytes(out)


def _snappy_length(data: memoryview) -> int:
    """The uncompressed length a raw snappy block starts with (a little-endian base-128 varint)."""
    value = 0
    for i in range(min(5, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value
    raise MongoProtocolError("OP_COMPRESSED snappy payload has no valid length header")


# -- opcode bodies: each parses buf[pos:end] (the message minus its header) -----------------------


def _expect_end(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise MongoProtocolError(f"{what}: {end - pos} unexpected trailing bytes")


def _need(pos: int, end: int, size: int, what: str) -> None:
    if end - pos < size:
        raise MongoProtocolError(f"{what}: truncated ({end - pos} bytes, need {size})")


def _parse_msg(buf: Buffer, pos: int, end: int, head: _Head) -> OpMsg:
    _need(pos, end, 5, "OP_MSG")
    flag_bits = _U32(buf, pos)[0]
    if flag_bits & _MSG_UNKNOWN_REQUIRED_BITS:
        raise MongoProtocolError(f"OP_MSG sets unknown required flagBits 0x{flag_bits:08x}")
    pos += 4
    checksum = None
    if flag_bits & MSG_CHECKSUM_PRESENT:
        _need(pos, end, 5, "OP_MSG with checksum")
        end -= 4
        checksum = _U32(buf, end)[0]
    body_start = body_end = -1
    sequences: list[DocumentSequence] = []
    while pos < end:
        kind = buf[pos]
        pos += 1
        if kind == 0:
            if body_start >= 0:
                raise MongoProtocolError("OP_MSG has more than one kind-0 section")
            body_start, body_end = pos, check_document(buf, pos, end, "OP_MSG body")
            pos = body_end
        elif kind == 1:
            _need(pos, end, 5, "OP_MSG document sequence")
            size = _I32(buf, pos)[0]
            if size < 5 or size > end - pos:
                raise MongoProtocolError(f"OP_MSG document sequence size {size} does not fit in {end - pos}")
            stop = pos + size
            identifier, docs = read_cstring(buf, pos + 4, stop, "OP_MSG document sequence identifier")
            count = count_documents(buf, docs, stop, f"OP_MSG document sequence {identifier!r}")
            sequences.append(DocumentSequence(identifier, count, size))
            pos = stop
        else:
            raise MongoProtocolError(f"OP_MSG has unknown section kind {kind}")
    if body_start < 0:
        raise MongoProtocolError("OP_MSG has no kind-0 (body) section")
    if len(sequences) > 1 and len({s.identifier for s in sequences}) != len(sequences):
        raise MongoProtocolError("OP_MSG repeats a document sequence identifier")
    summary = summarize(buf, body_start, body_end)
    body = memoryview(buf)[body_start:body_end]
    return OpMsg(*head, flag_bits, summary, tuple(sequences), checksum, body)


def _parse_query(buf: Buffer, pos: int, end: int, head: _Head) -> OpQuery:
    _need(pos, end, 4, "OP_QUERY")
    flags = _I32(buf, pos)[0]
    name, pos = read_cstring(buf, pos + 4, end, "OP_QUERY fullCollectionName")
    _need(pos, end, 8, "OP_QUERY")
    skip, limit = _I32(buf, pos)[0], _I32(buf, pos + 4)[0]
    query = pos + 8
    query_end = check_document(buf, query, end, "OP_QUERY query")
    summary = summarize(buf, query, query_end)
    view = memoryview(buf)
    selector = None
    if query_end < end:
        selector_end = check_document(buf, query_end, end, "OP_QUERY returnFieldsSelector")
        _expect_end(selector_end, end, "OP_QUERY")
        selector = view[query_end:selector_end]
    command = None
    if name.endswith(".$cmd"):
        command = summary.command
        if command == "$query" and buf[query + 4] == 0x03:  # {"$query": {<command>}, "$readPreference": ...}
            command = first_element(buf, query + 4 + len(b"\x03$query\x00"))[0]
    return OpQuery(*head, name, flags, skip, limit, command, summary, view[query:query_end], selector)


def _parse_reply(buf: Buffer, pos: int, end: int, head: _Head) -> OpReply:
    _need(pos, end, 20, "OP_REPLY")
    flags, cursor_id, starting_from, number_returned = _REPLY(buf, pos)
    docs = pos + 20
    count = count_documents(buf, docs, end, "OP_REPLY documents")
    if count != number_returned:
        raise MongoProtocolError(f"OP_REPLY numberReturned is {number_returned} but {count} documents follow")
    summary = summarize(buf, docs, docs + _I32(buf, docs)[0]) if count else None
    documents = memoryview(buf)[docs:end]
    return OpReply(*head, flags, cursor_id, starting_from, number_returned, summary, documents)


def _parse_update(buf: Buffer, pos: int, end: int, head: _Head) -> OpUpdate:
    _need(pos, end, 4, "OP_UPDATE")  # int32 ZERO
    name, pos = read_cstring(buf, pos + 4, end, "OP_UPDATE fullCollectionName")
    _need(pos, end, 4, "OP_UPDATE")
    flags = _I32(buf, pos)[0]
    selector_end = check_document(buf, pos + 4, end, "OP_UPDATE selector")
    update_end = check_document(buf, selector_end, end, "OP_UPDATE update")
    _expect_end(update_end, end, "OP_UPDATE")
    view = memoryview(buf)
    return OpUpdate(*head, name, flags, view[pos + 4 : selector_end], view[selector_end:update_end])


def _parse_insert(buf: Buffer, pos: int, end: int, head: _Head) -> OpInsert:
    _need(pos, end, 4, "OP_INSERT")
    flags = _I32(buf, pos)[0]
    name, pos = read_cstring(buf, pos + 4, end, "OP_INSERT fullCollectionName")
    count = count_documents(buf, pos, end, "OP_INSERT documents")
    return OpInsert(*head, name, flags, count, end - pos)


def _parse_delete(buf: Buffer, pos: int, end: int, head: _Head) -> OpDelete:
    _need(pos, end, 4, "OP_DELETE")  # int32 ZERO
    name, pos = read_cstring(buf, pos + 4, end, "OP_DELETE fullCollectionName")
    _need(pos, end, 4, "OP_DELETE")
    flags = _I32(buf, pos)[0]
    selector_end = check_document(buf, pos + 4, end, "OP_DELETE selector")
    _expect_end(selector_end, end, "OP_DELETE")
    return OpDelete(*head, name, flags, memoryview(buf)[pos + 4 : selector_end])


def _parse_get_more(buf: Buffer, pos: int, end: int, head: _Head) -> OpGetMore:
    _need(pos, end, 4, "OP_GET_MORE")  # int32 ZERO
    name, pos = read_cstring(buf, pos + 4, end, "OP_GET_MORE fullCollectionName")
    _expect_end(pos + 12, end, "OP_GET_MORE")
    return OpGetMore(*head, name, _I32(buf, pos)[0], _I64(buf, pos + 4)[0])


def _parse_kill_cursors(buf: Buffer, pos: int, end: int, head: _Head) -> OpKillCursors:
    _need(pos, end, 8, "OP_KILL_CURSORS")  # int32 ZERO, int32 numberOfCursorIDs
    count = _I32(buf, pos + 4)[0]
    if count < 0 or end - pos != 8 + 8 * count:
        raise MongoProtocolError(f"OP_KILL_CURSORS numberOfCursorIDs {count} does not match its length")
    ids = tuple(_I64(buf, at)[0] for at in range(pos + 8, end, 8))
    return OpKillCursors(*head, ids)


def _parse_command(buf: Buffer, pos: int, end: int, head: _Head) -> OpCommand:
    database, pos = read_cstring(buf, pos, end, "OP_COMMAND database")
    name, pos = read_cstring(buf, pos, end, "OP_COMMAND commandName")
    metadata_end = check_document(buf, pos, end, "OP_COMMAND metadata")
    args_end = check_document(buf, metadata_end, end, "OP_COMMAND commandArgs")
    inputs = count_documents(buf, args_end, end, "OP_COMMAND inputDocs")
    view = memoryview(buf)
    return OpCommand(*head, database, name, inputs, view[pos:metadata_end], view[metadata_end:args_end])


def _parse_command_reply(buf: Buffer, pos: int, end: int, head: _Head) -> OpCommandReply:
    metadata_end = check_document(buf, pos, end, "OP_COMMANDREPLY metadata")
    reply_end = check_document(buf, metadata_end, end, "OP_COMMANDREPLY commandReply")
    outputs = count_documents(buf, reply_end, end, "OP_COMMANDREPLY outputDocs")
    view = memoryview(buf)
    return OpCommandReply(*head, outputs, view[pos:metadata_end], view[metadata_end:reply_end])


_PARSERS: Final[dict[OpCode, Callable[[Buffer, int, int, _Head], Message]]] = {
    OpCode.MSG: _parse_msg,
    OpCode.QUERY: _parse_query,
    OpCode.REPLY: _parse_reply,
    OpCode.UPDATE: _parse_update,
    OpCode.INSERT: _parse_insert,
    OpCode.DELETE: _parse_delete,
    OpCode.GET_MORE: _parse_get_more,
    OpCode.KILL_CURSORS: _parse_kill_cursors,
    OpCode.COMMAND: _parse_command,
    OpCode.COMMAND_REPLY: _parse_command_reply,
}
