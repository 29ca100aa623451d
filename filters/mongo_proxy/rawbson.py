"""BSON read in place: framing checks, a top-level walk, and the few values stats need.

A BSON document (https://bsonspec.org/spec.html) is ``int32 length`` (itself included), then
elements, then ``0x00``. An element is ``uint8 type``, ``cstring key``, and a value whose size is
fixed by the type or given by a length prefix, so an element can be stepped over without decoding
it. That is all this module does: it walks the *top level* of a document, checking every element
stays inside it, and decodes only the values a ``DocSummary`` wants. Nested documents and arrays
are checked for length and trailing NUL only; a batch is counted one element at a time without
looking inside the elements.

Why not pymongo's ``bson``: it has no public partial decode. ``bson.decode`` builds every value
(memory and time follow the bytes: a 16 MB batch becomes many more MB of dicts), and
``RawBSONDocument`` inflates its whole top level on first access and wraps each element of a batch
in a Python object. Measured on one loaded 2-CPU box (CPU time per reply body)::

    reply, 101 docs of ~80 B (8.9 KB)    summarize 63 us   bson.decode 48 us   RawBSONDocument 92 us
    reply, 101 docs of 10 KB (1 MB)      summarize 61 us   bson.decode 139 us  RawBSONDocument 206 us
    find command, 8 keys (255 B)         summarize  9 us   bson.decode  5 us

The walk costs somewhat more than the C decoder while documents are small and stays flat as they
grow (its cost follows the number of top-level and batch elements, not the bytes), which is what
a sniffer of arbitrary traffic needs.

Every function takes a ``Buffer`` (``bytes``, or a ``bytearray`` nobody writes to any more) plus
offsets (no slicing copies) and raises only ``MongoProtocolError``. ``fastpath`` reads the common
layouts faster still, and uses this module for the rest.
"""

from __future__ import annotations

import math
import struct
from typing import Final

from filters.mongo_proxy.messages import (
    FIND_AWAIT_DATA,
    FIND_NO_CURSOR_TIMEOUT,
    FIND_TAILABLE,
    DocSummary,
    MongoProtocolError,
)

Buffer = bytes | bytearray  # a frame: a received chunk, or a buffer the decoder no longer writes to

_I32 = struct.Struct("<i").unpack_from
_I64 = struct.Struct("<q").unpack_from
_F64 = struct.Struct("<d").unpack_from

_DOUBLE, _STRING, _DOCUMENT, _ARRAY, _BOOL, _INT32, _INT64 = 0x01, 0x02, 0x03, 0x04, 0x08, 0x10, 0x12

# Value sizes of the fixed-width types: double, undefined, ObjectId, bool, UTC datetime, null,
# int32, timestamp, int64, decimal128, max key, min key.
_FIXED_SIZE: Final = {
    0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0,
    0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0,
}  # fmt: skip
_STRING_LIKE: Final = frozenset({0x02, 0x0D, 0x0E})  # string, JavaScript code, symbol

# (type, value start, value end) of one element.
Element = tuple[int, int, int]

# The boolean options of a "find" command and their DocSummary.cursor_options bits.
FIND_OPTIONS: Final = {b"tailable": FIND_TAILABLE, b"awaitData": FIND_AWAIT_DATA,
                       b"noCursorTimeout": FIND_NO_CURSOR_TIMEOUT}


def utf8(raw: Buffer, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise MongoProtocolError(f"{what}: invalid UTF-8") from None


def read_cstring(buf: Buffer, pos: int, end: int, what: str) -> tuple[str, int]:
    """The NUL-terminated UTF-8 string at ``pos`` (before ``end``) and the offset after it."""
    nul = buf.find(0, pos, end)
    if nul < 0:
        raise MongoProtocolError(f"{what}: unterminated cstring")
    return utf8(buf[pos:nul], what), nul + 1


def check_document(buf: Buffer, pos: int, end: int, what: str) -> int:
    """Check the framing of the BSON document at ``pos`` (it must end by ``end``); return its end."""
    if end - pos < 5:
        raise MongoProtocolError(f"{what}: truncated BSON document ({end - pos} bytes left)")
    length = _I32(buf, pos)[0]
    if length < 5 or length > end - pos:
        raise MongoProtocolError(f"{what}: BSON document length {length} does not fit in {end - pos} bytes")
    stop = pos + length
    if buf[stop - 1]:
        raise MongoProtocolError(f"{what}: BSON document does not end with NUL")
    return stop


def count_documents(buf: Buffer, pos: int, end: int, what: str) -> int:
    """Count the back-to-back documents filling ``buf[pos:end]`` exactly (framing only)."""
    count = 0
    while pos < end:
        pos = check_document(buf, pos, end, what)
        count += 1
    return count


def _string_end(buf: Buffer, pos: int, end: int) -> int:
    if end - pos < 5:
        raise MongoProtocolError("truncated BSON string")
    length = _I32(buf, pos)[0]
    stop = pos + 4 + length
    if length < 1 or stop > end or buf[stop - 1]:
        raise MongoProtocolError(f"BSON string length {length} is invalid")
    return stop


def value_end(buf: Buffer, kind: int, pos: int, end: int) -> int:
    """End of the value of type ``kind`` at ``pos``; it must not pass ``end``."""
    size = _FIXED_SIZE.get(kind)
    if size is not None:
        stop = pos + size
    elif kind in _STRING_LIKE:
        return _string_end(buf, pos, end)
    elif kind in (_DOCUMENT, _ARRAY):
        return check_document(buf, pos, end, "nested BSON document")
    elif kind == 0x05:  # binary: int32 length, uint8 subtype, bytes
        if end - pos < 5 or (length := _I32(buf, pos)[0]) < 0:
            raise MongoProtocolError("invalid BSON binary")
        stop = pos + 5 + length
    elif kind == 0x0B:  # regex: pattern cstring, options cstring
        pattern_end = buf.find(0, pos, end)
        options_end = buf.find(0, pattern_end + 1, end) if pattern_end >= 0 else -1
        if options_end < 0:
            raise MongoProtocolError("unterminated BSON regex")
        stop = options_end + 1
    elif kind == 0x0C:  # DBPointer: string, 12-byte ObjectId
        stop = _string_end(buf, pos, end) + 12
    elif kind == 0x0F:  # code with scope: int32 total length (>= 4 + 5-byte string + 5-byte doc)
        if end - pos < 14 or (length := _I32(buf, pos)[0]) < 14:
            raise MongoProtocolError("invalid BSON code with scope")
        stop = pos + length
    else:
        raise MongoProtocolError(f"unknown BSON element type 0x{kind:02x}")
    if stop > end:
        raise MongoProtocolError(f"BSON element of type 0x{kind:02x} overruns its document")
    return stop


def scan(
    buf: Buffer, start: int, stop: int, wanted: frozenset[bytes]
) -> tuple[tuple[bytes, Element] | None, dict[bytes, Element]]:
    """Walk the top level of the document ``buf[start:stop]`` (framing already checked).

    Returns the first element (key, element) and the first element found for each wanted key.
    """
    end = stop - 1  # the terminating NUL
    pos = start + 4
    first: tuple[bytes, Element] | None = None
    found: dict[bytes, Element] = {}
    find, i32, fixed = buf.find, _I32, _FIXED_SIZE
    while pos < end:
        kind = buf[pos]
        nul = find(0, pos + 1, end)
        if nul < 0:
            raise MongoProtocolError("unterminated BSON key")
        raw = buf[pos + 1 : nul]
        key = raw if type(raw) is bytes else bytes(raw)  # a bytearray's slices are unhashable
        value = nul + 1
        # The common cases inline (the hot loop of every decode); anything else, or anything that
        # fails a check, takes the long way through value_end, which raises the precise error.
        size = fixed.get(kind)
        if size is not None and value + size <= end:
            pos = value + size
        elif kind == _DOCUMENT or kind == _ARRAY:  # noqa: SIM109 - cheaper than a tuple
            length = i32(buf, value)[0] if end - value >= 5 else 0
            if 5 <= length <= end - value and not buf[value + length - 1]:
                pos = value + length
            else:
                pos = value_end(buf, kind, value, end)
        elif kind == _STRING:  # int32 length (the NUL included), UTF-8, NUL
            length = i32(buf, value)[0] if end - value >= 5 else 0
            if 1 <= length <= end - value - 4 and not buf[value + 3 + length]:
                pos = value + 4 + length
            else:
                pos = value_end(buf, kind, value, end)
        else:
            pos = value_end(buf, kind, value, end)
        if first is None:
            first = (key, (kind, value, pos))
        if key in wanted and key not in found:
            found[key] = (kind, value, pos)
    return first, found


def count_elements(buf: Buffer, start: int, stop: int) -> int:
    """Number of top-level elements of the document (or array) ``buf[start:stop]``."""
    end = stop - 1
    pos = start + 4
    count = 0
    find, i32 = buf.find, _I32
    while pos < end:
        kind = buf[pos]
        nul = find(0, pos + 1, end)
        if nul < 0:
            raise MongoProtocolError("unterminated BSON key")
        value = nul + 1
        if kind == _DOCUMENT and end - value >= 5:  # a batch of documents: inline
            length = i32(buf, value)[0]
            if 5 <= length <= end - value and not buf[value + length - 1]:
                pos = value + length
                count += 1
                continue
        pos = value_end(buf, kind, value, end)
        count += 1
    return count


def first_element(buf: Buffer, start: int = 0) -> tuple[str, str | None]:
    """Key of the first element of the document at ``buf[start:]``, and its value if a string.

    O(size of the first element): how a command name ("find") and its collection ("users") are
    read without walking the rest of the command. ``("", None)`` for an empty document.
    """
    stop = check_document(buf, start, len(buf), "BSON document")
    pos = start + 4
    if pos == stop - 1:
        return "", None
    kind = buf[pos]
    key, value = read_cstring(buf, pos + 1, stop - 1, "BSON key")
    stop = value_end(buf, kind, value, stop - 1)
    return key, string_value(buf, (kind, value, stop))


def string_value(buf: Buffer, element: Element | None) -> str | None:
    if element is None or element[0] != _STRING:
        return None
    _, start, stop = element
    return utf8(buf[start + 4 : stop - 1], "BSON string")


def number_value(buf: Buffer, element: Element | None) -> float | int | None:
    """An int32 / int64 / double / bool value; ``None`` for any other type."""
    if element is None:
        return None
    kind, start, _ = element
    if kind == _INT32:
        return int(_I32(buf, start)[0])
    if kind == _INT64:
        return int(_I64(buf, start)[0])
    if kind == _DOUBLE:
        return float(_F64(buf, start)[0])
    if kind == _BOOL:
        return int(buf[start] != 0)
    return None


def int_value(buf: Buffer, element: Element | None) -> int | None:
    value = number_value(buf, element)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    return value


_SUMMARY_KEYS: Final = frozenset(
    {b"$db", b"comment", b"$comment", b"ok", b"errmsg", b"$err", b"code", b"cursor", b"n", b"collection",
     *FIND_OPTIONS, b"filter", b"maxTimeMS"}
)
_CURSOR_KEYS: Final = frozenset({b"id", b"firstBatch", b"nextBatch"})
_ID: Final = frozenset({b"_id"})


def filter_id_type(buf: Buffer, start: int, stop: int) -> int:
    """BSON type of ``_id`` in the nested document ``buf[start:stop]``, 0 if absent.

    Nested documents are only framed by the decoder (see the module docstring), so garbage in
    this one must not fail the message: an element that cannot be stepped over ends the search.
    """
    try:
        _, found = scan(buf, start, stop, _ID)
    except MongoProtocolError:
        return 0
    element = found.get(b"_id")
    return element[0] if element is not None else 0


def summarize(buf: Buffer, start: int, stop: int) -> DocSummary:
    """Read a ``DocSummary`` from the document ``buf[start:stop]`` (framing already checked).

    This runs for every message: a value is converted only when its key is present.
    """
    first, found = scan(buf, start, stop, _SUMMARY_KEYS)
    command, collection = "", None
    if first is not None:
        command = utf8(first[0], "BSON key")
        if first[1][0] == _STRING:
            collection = string_value(buf, first[1])
    database = comment = errmsg = ok = code = cursor_id = num_docs = max_time_ms = None
    options = id_type = 0
    if found:
        get = found.get
        if (element := get(b"$db")) is not None:
            database = string_value(buf, element)
        if collection is None and command == "getMore":  # {getMore: <cursor id>, collection: "c"}
            collection = string_value(buf, get(b"collection"))
        if (element := get(b"comment")) is not None:
            comment = string_value(buf, element)
        if comment is None and (element := get(b"$comment")) is not None:
            comment = string_value(buf, element)
        if (element := get(b"ok")) is not None:
            ok = number_value(buf, element)
        if (element := get(b"errmsg")) is not None:
            errmsg = string_value(buf, element)
        if errmsg is None and (element := get(b"$err")) is not None:
            errmsg = string_value(buf, element)
        if (element := get(b"code")) is not None:
            code = int_value(buf, element)
        cursor = get(b"cursor")
        if cursor is not None and cursor[0] == _DOCUMENT:  # {cursor: {id, ns, firstBatch | nextBatch}}
            _, in_cursor = scan(buf, cursor[1], cursor[2], _CURSOR_KEYS)
            cursor_id = int_value(buf, in_cursor.get(b"id"))
            batch = in_cursor.get(b"firstBatch") or in_cursor.get(b"nextBatch")
            if batch is not None and batch[0] == _ARRAY:
                num_docs = count_elements(buf, batch[1], batch[2])
        if num_docs is None and (element := get(b"n")) is not None:
            num_docs = int_value(buf, element)
        if command == "find":  # what Envoy reads of a query, read here so that no one walks it again
            max_time_ms = int_value(buf, get(b"maxTimeMS"))
            for key, bit in FIND_OPTIONS.items():
                if key in found and number_value(buf, found[key]):
                    options |= bit
            query_filter = get(b"filter")
            if query_filter is not None and query_filter[0] == _DOCUMENT:
                id_type = filter_id_type(buf, query_filter[1], query_filter[2])
    return DocSummary(  # positional: this runs for every message
        stop - start,  # size
        command,
        collection,
        database,
        comment,
        None if ok is None else float(ok),
        errmsg,
        code,
        cursor_id,
        num_docs,
        max_time_ms,
        options,
        id_type,
    )
