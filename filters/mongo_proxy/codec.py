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
from collections.abc import Callable
from typing import Final, Generic, Literal

from filters.mongo_proxy.fastpath import S, SummaryReader
from filters.mongo_proxy.frames import (
    _HEADER,
    _I32,
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    SUPPORTED_COMPRESSORS,
    decode_frame,
)
from filters.mongo_proxy.messages import Message, MongoProtocolError, OpCode, OpMsg
from filters.mongo_proxy.rawbson import Buffer

_KNOWN_OPCODES: Final = frozenset(int(op) for op in OpCode)
_OP_MSG: Final = int(OpCode.MSG)


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""``next_message`` found no complete message in the buffer: feed more bytes."""


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
            return decode_frame(frame, self._decompress)
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


__all__ = ["HEADER_SIZE", "MAX_MESSAGE_SIZE", "NEED_DATA", "SUPPORTED_COMPRESSORS", "MongoDecoder"]
