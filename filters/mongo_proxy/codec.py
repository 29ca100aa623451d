"""Sans-IO decoder for the MongoDB wire protocol, one per direction of a sniffed connection.

Two ways to read it, on the same framing:

* ``feed(data)`` then ``next_message()`` until ``NEED_DATA``: every message as a ``Message``
  (``messages``), checked completely. The API for tests, tools and legacy opcodes.
* ``summaries(data)``: the sniffer's one call per read. Every plain OP_MSG is read by the fast
  path (``fastpath``: a small tuple with what stats need, read at predicted offsets); anything it
  is unsure of, and every other opcode, goes through the full decoder, an ``OpMsg`` converted to
  the same tuple. ``next_summary()`` is the one-message form.

No sockets, no asyncio, no stats: the mongo_proxy filter feeds it the bytes it relays and never
lets it alter traffic.

Wire format (all integers little-endian; https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/)::

    MsgHeader   int32 messageLength (header included), int32 requestID, int32 responseTo, int32 opCode
    OP_MSG      uint32 flagBits, Section+, [uint32 CRC-32C checksum if flagBits bit 0]
      Section   uint8 kind 0: document | uint8 kind 1: int32 size, cstring identifier, document*
    OP_COMPRESSED  int32 originalOpcode, int32 uncompressedSize, uint8 compressorId, bytes
                   (the original message minus its header, compressed as a whole)

plus the legacy opcodes laid out in ``messages``. A BSON document is ``int32 length`` (itself
included), elements, ``0x00`` (https://bsonspec.org/spec.html); an element is ``uint8 type``,
``cstring key``, value.

Invariants:

* A declared ``messageLength`` outside ``[16, MAX_MESSAGE_SIZE]`` or an unknown ``opCode`` fails
  as soon as the header bytes are seen, before any body is buffered. Hence a decoder drained after
  every ``feed`` holds less than one message plus a header, and never more than
  ``MAX_MESSAGE_SIZE`` of a single message.
* No message is copied twice. A fed ``bytes`` chunk is kept by reference and its whole messages
  are parsed in place; only the incomplete message it ends with is copied into the decoder's
  buffer, and then only the bytes that message lacks are taken from the next chunk. A completed
  buffer is handed over as the frame (``rawbson.Buffer``), not copied again. ``next_message``
  cuts a message out of a chunk that holds several (its ``memoryview`` fields must not pin the
  whole chunk); a chunk that is one message is used as it is.
* A ``Message`` is checked completely before it is returned: every field and document fits exactly
  in the frame, OP_MSG has exactly one kind-0 section and no unknown required flag bit, a reply's
  ``numberReturned`` matches its documents. The top level of each summarised document is walked
  element by element (types known, sizes in bounds); nested documents are length-checked only.
  A fast-path summary checks less: what it reads, and the framing (see ``fastpath``).
* After a ``MongoProtocolError`` the decoder is failed for good: ``feed`` drops data,
  ``next_message`` raises again, ``summaries`` returns nothing, ``error`` says why. A sniffer
  stops decoding that connection, proxying goes on.

Cheap by design: documents are walked in place by ``rawbson`` (top level only, no Python objects
built for values nobody asked for); full decodes happen only when a caller asks a message for its
document.
"""

from __future__ import annotations

import enum
import importlib
import struct
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Final, Generic, Literal

from filters.mongo_proxy.fastpath import S, SummaryReader
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
_KNOWN_OPCODES: Final = frozenset(int(op) for op in OpCode)
_OP_MSG: Final = int(OpCode.MSG)


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""``next_message`` found no complete message in the buffer: feed more bytes."""


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


class MongoDecoder(Generic[S]):
    """Decodes one direction of a MongoDB connection; see the module docstring for the rules."""

    __slots__ = ("_buf", "_convert", "_count", "_data", "_decompress", "_pos", "_read", "error")

    def __init__(
        self,
        *,
        decompress: bool = True,
        summaries: SummaryReader[S] | None = None,
        count_documents: bool = True,
    ) -> None:
        """``decompress=False`` returns every OP_COMPRESSED message as ``Compressed`` (cheapest).

        ``summaries`` (``fastpath.REQUESTS`` or ``fastpath.REPLIES``) is how ``summaries()`` and
        ``next_summary()`` return OP_MSG messages; without it they return full messages.
        ``count_documents=False`` lets a summary skip counting the documents of OP_MSG document
        sequences (its ``request_docs`` is then None).
        """
        self._buf = bytearray()  # the start of one incomplete message, and nothing else
        self._data: bytes | None = None  # a chunk fed and not yet consumed, parsed in place ...
        self._pos = 0  # ... from here
        self._decompress = decompress
        self._read: Callable[[Buffer, int, int, bool], S | None] | None = None
        self._convert: Callable[[OpMsg], S] | None = None
        if summaries is not None:
            self._read, self._convert = summaries
        self._count = count_documents
        self.error: str | None = None  # why the decoder failed (read-only): a MongoProtocolError's message

    @property
    def failed(self) -> bool:
        """True once a ``MongoProtocolError`` was raised; the decoder will not decode again."""
        return self.error is not None

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as a message."""
        data = self._data
        return len(self._buf) + (len(data) - self._pos if data is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take bytes seen on the connection (dropped once the decoder has failed).

        ``bytes`` are kept by reference, not copied: messages are parsed in place, and only the
        incomplete message a chunk ends with is copied, into the decoder's buffer.
        """
        if self.error is not None or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        pending = self._data
        if pending is None:
            self._data, self._pos = data, 0
        else:  # fed twice without draining: rare, so simply joined
            self._data, self._pos = pending[self._pos :] + data, 0

    def next_message(self) -> Message | Literal[_NeedData.NEED_DATA]:
        """Return the next complete message, or ``NEED_DATA``; raise ``MongoProtocolError``."""
        frame = self._next_frame()
        if frame is None:
            return NEED_DATA
        buf, pos, end, _ = frame
        return self._message(buf, pos, end)

    def next_summary(self) -> S | Message | Literal[_NeedData.NEED_DATA]:
        """As ``next_message``, but an OP_MSG comes as its summary (see ``__init__``)."""
        frame = self._next_frame()
        if frame is None:
            return NEED_DATA
        buf, pos, end, op_code = frame
        read = self._read
        if read is not None and op_code == _OP_MSG:
            summary = read(buf, pos, end, self._count)
            if summary is not None:
                return summary
        return self._full(buf, pos, end)

    def summaries(self, data: bytes) -> list[S | Message]:
        """Feed ``data`` and return every message it completes, as ``next_summary`` would.

        The sniffer's one call per read. A protocol error ends the list early: the messages before
        it are returned, and ``failed`` / ``error`` tell. Bugs still raise.
        """
        out: list[S | Message] = []
        if self.error is not None or not data:
            return out
        if type(data) is not bytes:
            data = bytes(data)
        pos = 0
        if self._buf or self._data is not None:  # first the message the last read left incomplete
            self.feed(data)
            try:
                while self._buf:
                    item = self.next_summary()
                    if item is NEED_DATA:
                        return out
                    out.append(item)
            except MongoProtocolError:
                return out
            if self._data is None:
                return out
            data, pos = self._data, self._pos
            self._data = None
        # Then message after message in place, inline: the hot loop of the sniffer.
        read, count, append, known = self._read, self._count, out.append, _KNOWN_OPCODES
        size = len(data)
        try:
            while size - pos >= HEADER_SIZE:
                length, _, _, op_code = _HEADER(data, pos)
                end = pos + length
                if end > size or not HEADER_SIZE <= length <= MAX_MESSAGE_SIZE or op_code not in known:
                    break  # incomplete or invalid: _next_frame keeps the one or reports the other
                summary = read(data, pos, end, count) if op_code == _OP_MSG and read is not None else None
                append(summary if summary is not None else self._full(data, pos, end))
                pos = end
            if pos < size:
                self._data, self._pos = data, pos
                while (item := self.next_summary()) is not NEED_DATA:
                    out.append(item)
        except MongoProtocolError:
            pass
        return out

    # ----- framing ---------------------------------------------------------------------------

    def _next_frame(self) -> tuple[Buffer, int, int, int] | None:
        """The next complete frame as (buffer, start, end, opCode); None: more bytes are needed.

        Raises ``MongoProtocolError`` for a bad header as soon as its bytes are seen.
        """
        if self.error is not None:
            raise MongoProtocolError(self.error)
        buf, data = self._buf, self._data
        if buf:
            if data is not None:
                self._fill(buf, data)
            return self._buffered_frame(buf)
        if data is None:
            return None
        pos = self._pos
        have = len(data) - pos
        if have >= 4:
            length = _I32(data, pos)[0]
            if length < HEADER_SIZE or length > MAX_MESSAGE_SIZE:
                raise self._failed(_bad_length(length, data, pos))
            if have >= HEADER_SIZE:
                op_code = _I32(data, pos + 12)[0]
                if op_code not in _KNOWN_OPCODES:
                    raise self._failed(f"unknown opCode {op_code}{_hint(data, pos)}")
                if have >= length:
                    end = pos + length
                    if end == len(data):
                        self._data = None
                    else:
                        self._pos = end
                    return data, pos, end, op_code
        buf += memoryview(data)[pos:] if pos else data  # the incomplete message, alone
        self._data = None
        return None

    def _fill(self, buf: bytearray, data: bytes) -> None:
        """Move from ``data`` into ``buf`` the bytes its message still lacks, and no more."""
        pos = self._pos
        with memoryview(data) as view:
            if len(buf) < HEADER_SIZE:
                take = HEADER_SIZE - len(buf)
                buf += view[pos : pos + take]
                pos += take
            if len(buf) >= HEADER_SIZE:
                length = _I32(buf, 0)[0]
                if HEADER_SIZE <= length <= MAX_MESSAGE_SIZE and _I32(buf, 12)[0] in _KNOWN_OPCODES:
                    take = length - len(buf)
                    buf += view[pos : pos + take]
                    pos += take
        if pos >= len(data):
            self._data = None
        else:
            self._pos = pos

    def _buffered_frame(self, buf: bytearray) -> tuple[Buffer, int, int, int] | None:
        have = len(buf)
        if have < 4:
            return None
        length = _I32(buf, 0)[0]
        if length < HEADER_SIZE or length > MAX_MESSAGE_SIZE:
            raise self._failed(_bad_length(length, buf, 0))
        if have < HEADER_SIZE:
            return None
        op_code = _I32(buf, 12)[0]
        if op_code not in _KNOWN_OPCODES:
            raise self._failed(f"unknown opCode {op_code}{_hint(buf, 0)}")
        if have < length:
            return None
        self._buf = bytearray()  # the frame is handed over whole: nobody writes to it again
        return buf, 0, length, op_code

    def _message(self, buf: Buffer, pos: int, end: int) -> Message:
        """Decode the frame ``buf[pos:end]`` in full (messages keep views of it, so it is cut out)."""
        frame = buf[pos:end] if pos or end != len(buf) else buf
        try:
            return _decode_frame(frame, self._decompress)
        except MongoProtocolError as exc:
            self._failed(str(exc))
            raise

    def _full(self, buf: Buffer, pos: int, end: int) -> S | Message:
        msg = self._message(buf, pos, end)
        convert = self._convert
        if convert is not None and type(msg) is OpMsg:
            return convert(msg)
        return msg

    def _failed(self, reason: str) -> MongoProtocolError:
        self.error = reason
        self._buf = bytearray()  # a failed decoder holds nothing
        self._data = None
        return MongoProtocolError(reason)


def _bad_length(length: int, buf: Buffer, pos: int) -> str:
    return f"messageLength {length} is outside [16, {MAX_MESSAGE_SIZE}]{_hint(buf, pos)}"


def _hint(buf: Buffer, pos: int) -> str:
    """Name the protocol the peer seems to speak instead, for the error message."""
    head = bytes(buf[pos : pos + 4])
    if head.startswith(b"\x16\x03"):
        return " (looks like a TLS handshake: is the client using TLS to a plaintext port?)"
    if head in (b"GET ", b"POST", b"PUT ", b"HEAD", b"HTTP", b"PRI ", b"DELE", b"OPTI"):
        return " (looks like HTTP)"
    return ""


# -- frames -------------------------------------------------------------------------------------

# message_length, request_id, response_to, op_code, wire_size, compressor: the ``Message`` fields.
_Head = tuple[int, int, int, OpCode, int, Compressor | None]
_OPCODES: Final = {int(op): op for op in OpCode}
_COMPRESSORS: Final = {int(c): c for c in Compressor}
_COMPRESSED_PREFIX: Final = 9


def _decode_frame(frame: Buffer, decompress: bool) -> Message:
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
