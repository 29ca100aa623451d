"""The messages ``MongoDecoder`` yields: one frozen, slotted dataclass per wire opcode.

Every message carries the standard header (``messageLength``, ``requestID``, ``responseTo``,
``opCode``) plus ``wire_size``, the bytes it took on the wire, and ``compressor``, how it was
compressed (``None`` when it was sent plain). For a message that arrived inside OP_COMPRESSED and
was decompressed, ``op_code`` is the original opcode, ``message_length`` is the uncompressed length
(``uncompressedSize + 16``) and ``wire_size`` is the size of the OP_COMPRESSED frame.

Decoding is shallow on purpose (this is a passive sniffer): what stats and access logs need is
read from the *top level* of the command or reply document into a ``DocSummary`` while the frame
is checked, and nothing else is decoded. Documents are kept as read-only ``memoryview`` slices of
the received frame (no copy); ``document()`` / ``decode_documents()`` decode them fully, on demand.
Bulk payloads (OP_MSG kind-1 document sequences, OP_INSERT documents) are only counted.

Layouts: https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/ (current and legacy
opcodes) and https://github.com/mongodb/specifications/blob/master/source/message/OP_MSG.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import BSONError


class MongoProtocolError(Exception):
    """The peer broke the MongoDB wire protocol, or is not speaking it at all.

    The only exception the decoder raises; anything else is a bug in meshproxy.
    """


class OpCode(enum.IntEnum):
    """Wire opcodes (``MsgHeader.opCode``)."""

    REPLY = 1
    UPDATE = 2001
    INSERT = 2002
    QUERY = 2004
    GET_MORE = 2005
    DELETE = 2006
    KILL_CURSORS = 2007
    COMMAND = 2010
    COMMAND_REPLY = 2011
    COMPRESSED = 2012
    MSG = 2013


class Compressor(enum.IntEnum):
    """OP_COMPRESSED ``compressorId`` (the MongoDB compression spec; 4-255 are reserved)."""

    NOOP = 0
    SNAPPY = 1
    ZLIB = 2
    ZSTD = 3


# OP_MSG flagBits (https://github.com/mongodb/specifications/blob/master/source/message/OP_MSG.md).
MSG_CHECKSUM_PRESENT: Final = 1 << 0
MSG_MORE_TO_COME: Final = 1 << 1
MSG_EXHAUST_ALLOWED: Final = 1 << 16

# DocSummary.cursor_options bits: the boolean cursor options of a "find" command.
FIND_TAILABLE: Final = 1 << 0
FIND_AWAIT_DATA: Final = 1 << 1
FIND_NO_CURSOR_TIMEOUT: Final = 1 << 2

# Full decodes (on demand only) must not fail on dates outside datetime's range.
_DECODE_OPTIONS: Final[CodecOptions[dict[str, Any]]] = CodecOptions(
    datetime_conversion=DatetimeConversion.DATETIME_AUTO
)


def decode_document(view: memoryview | bytes) -> dict[str, object]:
    """Fully decode one BSON document; a malformed one raises ``MongoProtocolError``.

    The decoder only checks the top level of the documents it summarises, so a nested value can
    still be garbage here.
    """
    try:
        return bson.decode(view, _DECODE_OPTIONS)
    except (BSONError, ValueError, TypeError, OverflowError) as exc:  # bson's C and Python paths differ
        raise MongoProtocolError(f"malformed BSON document: {exc}") from None


@dataclass(frozen=True, slots=True)
class DocSummary:
    """What stats and logs need from one command or reply document, read from its top level.

    A request document yields ``command`` / ``collection`` / ``database`` / ``comment`` (and, for
    ``find``, ``max_time_ms`` / ``cursor_options`` / ``filter_id_type``); a reply yields ``ok`` /
    ``errmsg`` / ``code`` / ``cursor_id`` / ``num_docs``. Each field is ``None`` (or 0) when the key
    is absent or holds an unexpected type.
    """

    size: int  # bytes of the document
    command: str  # the first key ("" for an empty document): the command name of a request
    collection: str | None  # the first value when it is a string; for getMore, its "collection"
    database: str | None  # "$db"
    comment: str | None  # "comment", else "$comment", when it is a string (callsite stats)
    ok: float | None
    errmsg: str | None  # "errmsg", else legacy "$err"
    code: int | None
    cursor_id: int | None  # cursor.id
    num_docs: int | None  # len(cursor.firstBatch or cursor.nextBatch), else "n"
    # Read only for a "find" command (Envoy's per-query stats), so a sniffer need not walk it again:
    max_time_ms: int | None = None  # "maxTimeMS"
    cursor_options: int = 0  # FIND_TAILABLE | FIND_AWAIT_DATA | FIND_NO_CURSOR_TIMEOUT, when true
    filter_id_type: int = 0  # BSON type of filter._id; 0 = no filter or no _id (Envoy: a scatter get)


@dataclass(frozen=True, slots=True)
class DocumentSequence:
    """An OP_MSG kind-1 section: counted, never decoded."""

    identifier: str  # the command argument it stands for, e.g. "documents" for insert
    count: int
    size: int  # the section's size field (includes itself and the identifier)


@dataclass(frozen=True, slots=True)
class Message:
    """Fields shared by every decoded message."""

    message_length: int  # declared length of the (uncompressed) message, header included
    request_id: int
    response_to: int
    op_code: OpCode  # for a decompressed message, its original opcode
    wire_size: int  # bytes on the wire (the OP_COMPRESSED frame when it came compressed)
    compressor: Compressor | None  # None: sent uncompressed


@dataclass(frozen=True, slots=True)
class OpMsg(Message):
    """OP_MSG (2013), used by every driver for MongoDB >= 3.6, in both directions."""

    flag_bits: int
    summary: DocSummary  # of the kind-0 body
    sequences: tuple[DocumentSequence, ...]
    checksum: int | None  # CRC-32C when checksumPresent; read, not verified
    body: memoryview = field(repr=False)

    @property
    def checksum_present(self) -> bool:
        return bool(self.flag_bits & MSG_CHECKSUM_PRESENT)

    @property
    def more_to_come(self) -> bool:
        """Request: no reply will follow. Reply: more replies follow (exhaust cursor)."""
        return bool(self.flag_bits & MSG_MORE_TO_COME)

    @property
    def exhaust_allowed(self) -> bool:
        return bool(self.flag_bits & MSG_EXHAUST_ALLOWED)

    @property
    def command(self) -> str:
        return self.summary.command

    @property
    def collection(self) -> str | None:
        return self.summary.collection

    @property
    def database(self) -> str | None:
        return self.summary.database

    @property
    def comment(self) -> str | None:
        return self.summary.comment

    @property
    def ok(self) -> float | None:
        return self.summary.ok

    @property
    def errmsg(self) -> str | None:
        return self.summary.errmsg

    @property
    def code(self) -> int | None:
        return self.summary.code

    @property
    def cursor_id(self) -> int | None:
        return self.summary.cursor_id

    @property
    def num_docs(self) -> int | None:
        return self.summary.num_docs

    def document(self) -> dict[str, object]:
        """The kind-0 body, fully decoded (costly for big replies: for logs, not stats)."""
        return decode_document(self.body)


@dataclass(frozen=True, slots=True)
class _Namespaced(Message):
    """A legacy message addressed to ``fullCollectionName`` ("db.collection")."""

    full_collection_name: str

    @property
    def database(self) -> str:
        return self.full_collection_name.partition(".")[0]

    @property
    def collection(self) -> str | None:
        """The part after the first dot; ``None`` if the name has no dot."""
        _, dot, collection = self.full_collection_name.partition(".")
        return collection if dot else None


@dataclass(frozen=True, slots=True)
class OpQuery(_Namespaced):
    """OP_QUERY (2004): legacy queries, commands on "db.$cmd", and the initial handshake."""

    flags: int
    number_to_skip: int
    number_to_return: int
    command: str | None  # on "<db>.$cmd": first key of the query (or of its "$query")
    summary: DocSummary  # of the query document
    query: memoryview = field(repr=False)
    return_fields_selector: memoryview | None = field(repr=False)

    # flags bit 0 is reserved.
    @property
    def tailable_cursor(self) -> bool:
        return bool(self.flags & (1 << 1))

    @property
    def slave_ok(self) -> bool:
        return bool(self.flags & (1 << 2))

    @property
    def oplog_replay(self) -> bool:
        return bool(self.flags & (1 << 3))

    @property
    def no_cursor_timeout(self) -> bool:
        return bool(self.flags & (1 << 4))

    @property
    def await_data(self) -> bool:
        return bool(self.flags & (1 << 5))

    @property
    def exhaust(self) -> bool:
        return bool(self.flags & (1 << 6))

    @property
    def partial(self) -> bool:
        return bool(self.flags & (1 << 7))

    @property
    def comment(self) -> str | None:
        return self.summary.comment

    def document(self) -> dict[str, object]:
        """The query document, fully decoded."""
        return decode_document(self.query)


@dataclass(frozen=True, slots=True)
class OpReply(Message):
    """OP_REPLY (1): the answer to OP_QUERY / OP_GET_MORE."""

    response_flags: int
    cursor_id: int
    starting_from: int
    number_returned: int  # checked equal to the number of documents in the frame
    summary: DocSummary | None  # of the first document (the reply of a "$cmd" query)
    documents: memoryview = field(repr=False)  # all returned documents, back to back

    @property
    def cursor_not_found(self) -> bool:
        return bool(self.response_flags & (1 << 0))

    @property
    def query_failure(self) -> bool:
        return bool(self.response_flags & (1 << 1))

    @property
    def shard_config_stale(self) -> bool:
        return bool(self.response_flags & (1 << 2))

    @property
    def await_capable(self) -> bool:
        return bool(self.response_flags & (1 << 3))

    @property
    def num_docs(self) -> int:
        return self.number_returned

    @property
    def documents_size(self) -> int:
        return len(self.documents)

    def decode_documents(self) -> list[dict[str, object]]:
        """Every returned document, fully decoded."""
        try:
            docs = bson.decode_all(self.documents, _DECODE_OPTIONS)
        except (BSONError, ValueError, TypeError, OverflowError) as exc:
            raise MongoProtocolError(f"malformed BSON document in OP_REPLY: {exc}") from None
        return list(docs)


@dataclass(frozen=True, slots=True)
class OpInsert(_Namespaced):
    """OP_INSERT (2002, legacy): documents are counted, never decoded."""

    flags: int
    document_count: int
    documents_size: int

    @property
    def continue_on_error(self) -> bool:
        return bool(self.flags & (1 << 0))


@dataclass(frozen=True, slots=True)
class OpUpdate(_Namespaced):
    """OP_UPDATE (2001, legacy)."""

    flags: int
    selector: memoryview = field(repr=False)
    update: memoryview = field(repr=False)

    @property
    def upsert(self) -> bool:
        return bool(self.flags & (1 << 0))

    @property
    def multi_update(self) -> bool:
        return bool(self.flags & (1 << 1))


@dataclass(frozen=True, slots=True)
class OpDelete(_Namespaced):
    """OP_DELETE (2006, legacy)."""

    flags: int
    selector: memoryview = field(repr=False)

    @property
    def single_remove(self) -> bool:
        return bool(self.flags & (1 << 0))


@dataclass(frozen=True, slots=True)
class OpGetMore(_Namespaced):
    """OP_GET_MORE (2005, legacy)."""

    number_to_return: int
    cursor_id: int


@dataclass(frozen=True, slots=True)
class OpKillCursors(Message):
    """OP_KILL_CURSORS (2007, legacy)."""

    cursor_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OpCommand(Message):
    """OP_COMMAND (2010, MongoDB 3.2-3.6 internal RPC): header fields only, documents framed."""

    database: str
    command_name: str
    input_doc_count: int  # documents after metadata and commandArgs
    metadata: memoryview = field(repr=False)
    command_args: memoryview = field(repr=False)


@dataclass(frozen=True, slots=True)
class OpCommandReply(Message):
    """OP_COMMANDREPLY (2011): documents framed, not summarised."""

    output_doc_count: int  # documents after metadata and commandReply
    metadata: memoryview = field(repr=False)
    command_reply: memoryview = field(repr=False)


@dataclass(frozen=True, slots=True)
class Compressed(Message):
    """OP_COMPRESSED (2012) left compressed: its compressor is unavailable or decompression is off.

    ``op_code`` is COMPRESSED and ``compressor`` is the ``compressorId``.
    """

    original_op_code: OpCode
    uncompressed_size: int
