"""OP_MSG requests and replies read at predicted offsets: only what stats and logs need.

``MongoDecoder.summaries`` hands every plain OP_MSG frame to ``read_request`` / ``read_reply``
first. They read the few values the stats need: the header, flag bits and body length with one
``struct`` call, then ``bytes.startswith`` on the layouts drivers and servers send, ``bytes.find``
and one regex search (all in C). They return a small tuple (``RequestSummary`` / ``ReplySummary``)
instead of a ``Message``. A frame they are not sure about gets ``None`` and the full decoder
(``codec``) reads it; its ``OpMsg`` becomes the same tuple (``request_summary`` /
``reply_summary``). The filter sees one shape per direction.

What is read (https://github.com/mongodb/specifications/blob/master/source/message/OP_MSG.md):

* **Request**: the first element (its key is the command; its value the collection, when a
  string). Decoded names are cached per distinct first element (``_NAMES``, bounded). ``$db`` is
  read in place when it is the last element (pymongo), else searched. A ``getMore``'s
  ``collection`` is searched. For ``find`` only: the ``_id`` type of ``filter``, stepped to
  (drivers send it second), then ``maxTimeMS``, ``tailable`` / ``awaitData`` /
  ``noCursorTimeout`` and ``comment`` / ``$comment``, all usually absent: one regex search over
  the elements after the filter proves that.
* **Reply**: ``{cursor: {firstBatch | nextBatch: [...], id, ns}, ok: 1.0, ...}`` (the server's
  order) is read by stepping from element to element. The batch is counted by jumping from
  document to document (array keys are "0", "1", ..., so each key's NUL is at a known offset),
  each document's length and terminator checked. ``{n, ..., ok}`` and ``{ok: 1.0, ...}`` (write
  and plain replies) likewise. A failure (``ok`` other than 1) goes to the full decoder: errors
  are rare, and only they need ``code`` / ``errmsg``.

**Searched keys** follow one rule that makes them exact. A key's pattern (type, key, NUL) is
counted in the range searched:

* 0 occurrences: no such element at the top level;
* exactly 1: it is the top-level element if the top level steps from it, element by element, to
  the terminator (``_ends_at``). Otherwise it sits in a nested document (the walk meets that
  document's terminator first) or inside a value, and the top level has no such element, since
  one would be an occurrence too;
* 2 or more: ``_Unsure``, and the full decoder reads the frame.

What is left: a value crafted to contain a whole element, with bytes after it that re-synchronise
with the real elements, is taken for that element when the real key is absent. It can only make a
request report a ``comment`` / ``maxTimeMS`` / option the sender could have sent anyway, or a
``$db`` on a request the server refuses (a request without ``$db`` is an error, 40571). With the
real key present there are two occurrences, and the full decoder reads the frame. Duplicate
top-level keys (the server reads the first) take the full decoder too. The exception is a string
searched by type (``$db``, ``comment``, ``collection``) whose first duplicate is not a string:
again the sender's choice. Replies are never searched for their counts, so a stored document
cannot do it.

What is *not* checked, unlike the full decoder: the top-level elements the fast path does not read
(garbage there is left for the server to refuse), the documents inside kind-1 sections (counted
leniently, and only for the access log), the identifiers of kind-1 sections (not decoded, not
checked for duplicates). Everything read is bounds-checked: a fast reader never raises and never
reads past ``end``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Final, Generic, NamedTuple, TypeVar

from filters.mongo_proxy.messages import (
    FIND_AWAIT_DATA,
    FIND_NO_CURSOR_TIMEOUT,
    FIND_TAILABLE,
    MSG_MORE_TO_COME,
    Compressor,
    MongoProtocolError,
    OpMsg,
)
from filters.mongo_proxy.rawbson import (
    Buffer,
    count_elements,
    filter_id_type,
    int_value,
    number_value,
    scan,
    value_end,
)

RequestSummary = tuple[
    int,  # 0 request_id
    int,  # 1 flag_bits
    str,  # 2 command: the first key
    str | None,  # 3 collection: the first value if a string; for getMore its "collection"
    str | None,  # 4 database: "$db"
    int,  # 5 wire_size
    Compressor | None,  # 6 compressor
    int | None,  # 7 request_docs: documents in kind-1 sections (None: not counted)
    int | None,  # 8 max_time_ms  (find only, as the rest)
    int,  # 9 cursor_options: FIND_TAILABLE | FIND_AWAIT_DATA | FIND_NO_CURSOR_TIMEOUT
    int,  # 10 filter_id_type: BSON type of filter._id, 0 if none
    str | None,  # 11 comment: "comment", else "$comment", if a string
]
ReplySummary = tuple[
    int,  # 0 response_to
    int,  # 1 request_id
    int,  # 2 flag_bits
    int,  # 3 size: bytes of the body plus any kind-1 sections
    float | None,  # 4 ok
    int | None,  # 5 code (of a failed reply: ok == 0; else None)
    str | None,  # 6 errmsg ("errmsg", else "$err", of a failed reply)
    int | None,  # 7 cursor_id
    int | None,  # 8 num_docs: len(firstBatch | nextBatch), else "n", else None
    Compressor | None,  # 9 compressor
]
S = TypeVar("S", RequestSummary, ReplySummary)


class SummaryReader(NamedTuple, Generic[S]):
    """How one direction is summarised: the fast reader and the conversion of a full ``OpMsg``."""

    read: Callable[[Buffer, int, int, bool], S | None]  # (frame buffer, start, end, count docs)
    convert: Callable[[OpMsg], S]


_START = struct.Struct("<iiiiIBi").unpack_from  # MsgHeader, flagBits, first section kind, its int32
_I32 = struct.Struct("<i").unpack_from
_I64 = struct.Struct("<q").unpack_from

# Any required flag bit other than moreToCome: checksumPresent (the full decoder reads the
# checksum) or an unknown one (the full decoder raises).
_OTHER_REQUIRED_BITS: Final = 0xFFFF & ~MSG_MORE_TO_COME
_MIN_FRAME: Final = 16 + 4 + 1 + 5  # header, flagBits, kind 0, the smallest document

_FIXED_SIZE: Final = {
    0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0,
    0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0,
}  # fmt: skip
_OK_1: Final = b"\x01ok\x00" + struct.pack("<d", 1.0)  # "ok": 1.0, as servers send it
_FIND_OPTIONS: Final = (
    (b"tailable\x00", FIND_TAILABLE),
    (b"awaitData\x00", FIND_AWAIT_DATA),
    (b"noCursorTimeout\x00", FIND_NO_CURSOR_TIMEOUT),
)
_CURSOR_KEYS: Final = frozenset({b"id", b"firstBatch", b"nextBatch"})


# -- stepping and searching -----------------------------------------------------------------------


def _string_at(buf: Buffer, value: int, last: int) -> int:
    """End of the BSON string at ``value`` (int32 length, bytes, NUL) if it ends by ``last``, else -1."""
    if last - value < 5:
        return -1
    length = _I32(buf, value)[0]
    stop = value + 4 + length
    if length < 1 or stop > last or buf[stop - 1]:
        return -1
    return stop


def _document_at(buf: Buffer, value: int, last: int) -> int:
    """End of the BSON document (or array) at ``value`` if it ends by ``last``, else -1."""
    if last - value < 5:
        return -1
    length = _I32(buf, value)[0]
    stop = value + length
    if length < 5 or stop > last or buf[stop - 1]:
        return -1
    return stop


def _ends_at(buf: Buffer, pos: int, last: int) -> bool:
    """True if the elements from ``pos`` step exactly to ``last`` (their document's terminator)."""
    find, fixed = buf.find, _FIXED_SIZE
    while pos < last:
        kind = buf[pos]
        nul = find(0, pos + 1, last)
        if nul < 0:
            return False
        size = fixed.get(kind)
        if size is not None:
            pos = nul + 1 + size
        elif kind == 0x02:
            pos = _string_at(buf, nul + 1, last)
        elif kind == 0x03 or kind == 0x04:
            pos = _document_at(buf, nul + 1, last)
        else:
            try:
                pos = value_end(buf, kind, nul + 1, last)
            except MongoProtocolError:
                return False
        if pos < 0:
            return False
    return pos == last


class _Unsure(Exception):
    """The fast path cannot tell (a key occurs more than once): the full decoder reads the frame."""


def _only(buf: Buffer, pattern: bytes, pos: int, last: int) -> int:
    """Where ``pattern`` occurs in ``buf[pos:last]``, -1 if nowhere; ``_Unsure`` if more than once."""
    at = buf.find(pattern, pos, last)
    if at >= 0 and buf.find(pattern, at + 1, last) >= 0:
        raise _Unsure
    return at


def _top_string(buf: Buffer, pattern: bytes, pos: int, last: int) -> str | None:
    """The top-level string element matching ``pattern`` (type + key + NUL) after ``pos``.

    ``pos`` must be an element boundary. The one occurrence of ``pattern`` is the element if the
    top level steps from it to the terminator; otherwise it sits in a nested document or in a
    value, and there is no such element at the top level (it would be an occurrence too).
    Raises ``UnicodeDecodeError`` for a value that is not UTF-8.
    """
    at = _only(buf, pattern, pos, last)
    if at < 0:
        return None
    value = at + len(pattern)
    stop = _string_at(buf, value, last)
    if stop > 0 and (stop == last or _ends_at(buf, stop, last)):
        return buf[value + 4 : stop - 1].decode()
    return None


def _top_element(buf: Buffer, key: bytes, pos: int, last: int) -> tuple[int, int, int] | None:
    """The top-level element (type, value start, value end) whose key + NUL is ``key``, as above."""
    at = _only(buf, key, pos + 1, last)  # after the element's type byte
    if at < 0:
        return None
    kind = buf[at - 1]
    value = at + len(key)
    size = _FIXED_SIZE.get(kind)
    if size is not None:
        stop = value + size
    else:
        try:
            stop = value_end(buf, kind, value, last)
        except MongoProtocolError:
            return None
    if stop <= last and _ends_at(buf, stop, last):
        return kind, value, stop
    return None


def _sections(buf: Buffer, pos: int, end: int, count: bool) -> tuple[int, int]:
    """The kind-1 sections from ``pos`` to ``end``: (their total size, their documents if ``count``).

    (-1, 0) for anything else (a second body, an unknown kind, a size that does not fit): the
    full decoder then reports it. Documents are counted leniently, up to the first that does
    not fit: the count is only for the access log.
    """
    total = docs = 0
    while pos < end:
        if buf[pos] != 1 or end - pos < 6:
            return -1, 0
        size = _I32(buf, pos + 1)[0]
        stop = pos + 1 + size
        if size < 5 or stop > end:
            return -1, 0
        at = buf.find(0, pos + 5, stop) + 1
        if not at:
            return -1, 0
        while count and stop - at >= 5:
            length = _I32(buf, at)[0]
            if length < 5 or length > stop - at:
                break
            at += length
            docs += 1
        total += size
        pos = stop
    return total, docs


# -- requests -------------------------------------------------------------------------------------


def read_request(buf: Buffer, pos: int, end: int, count: bool) -> RequestSummary | None:
    """Summarise the OP_MSG request ``buf[pos:end]``; ``None`` hands it to the full decoder.

    ``count``: count the documents of kind-1 sections (``request_docs``; else it is None).
    """
    if end - pos < _MIN_FRAME:
        return None
    _, request_id, _, _, flags, kind, size = _START(buf, pos)
    start = pos + 21
    stop = start + size
    last = stop - 1
    if flags & _OTHER_REQUIRED_BITS or kind or size < 5 or stop > end or buf[last]:
        return None
    docs: int | None = 0
    if stop != end:
        more, docs = _sections(buf, stop, end, count)
        if more < 0:
            return None
    if not count:
        docs = None
    # The first element: {<command>: <collection, or anything>, ...}
    first = start + 4
    kind = buf[first]
    nul = buf.find(0, first + 1, last)  # -1 for {} too
    if nul < 0:
        return None
    value = nul + 1
    if kind == 0x02:
        if last - value < 5:
            return None
        after = value + 4 + _I32(buf, value)[0]
        if after <= value + 4 or after > last or buf[after - 1]:
            return None
        raw = buf[first:after]
    else:
        size = _FIXED_SIZE.get(kind, -1)
        try:
            after = value + size if size >= 0 else value_end(buf, kind, value, last)
        except MongoProtocolError:
            return None
        if after > last:
            return None
        raw = buf[first:nul]  # the type and the key: this value names nothing
    if type(raw) is not bytes:
        raw = bytes(raw)
    names = _NAMES.get(raw)
    if names is None:
        names = _names(raw, nul - first)
        if names is None:
            return None
    command, collection = names
    # $db: drivers put it last (pymongo) or near the end. The first occurrence being the last
    # element, it is the only one: the common case, read in place.
    database = None
    options_end = last  # where the search for a find's options stops
    at = buf.find(b"\x02$db\x00", after, last)
    try:
        if at >= 0:
            value = at + 5
            if last - value >= 5 and value + 4 + _I32(buf, value)[0] == last and not buf[last - 1]:
                database = buf[value + 4 : last - 1].decode()
                options_end = at
            else:
                database = _top_string(buf, b"\x02$db\x00", at, last)
        if command != "find":
            if collection is None and command == "getMore":  # {getMore: <cursor id>, collection: "c"}
                collection = _top_string(buf, b"\x02collection\x00", after, last)
            return (request_id, flags, command, collection, database, end - pos, None, docs, None, 0, 0, None)
    except (UnicodeDecodeError, _Unsure):
        return None
    # A find: what Envoy reads of a query. Its filter first (drivers send it second) ...
    id_type = 0
    if buf.startswith(b"\x03filter\x00", after, last):
        start = after + 8
        if last - start < 5:
            return None
        stop = start + _I32(buf, start)[0]
        if stop < start + 5 or stop > last or buf[stop - 1]:
            return None
        if buf.startswith(b"_id\x00", start + 5, stop):  # {_id: ..., ...}: its type, if the rest holds up
            kind = buf[start + 4]
            # {_id: <fixed size>} alone is read in place; anything else is walked
            if start + 9 + _FIXED_SIZE.get(kind, -9) == stop - 1 or _ends_at(buf, start + 4, stop - 1):
                id_type = kind
        else:
            id_type = filter_id_type(buf, start, stop)
        after = stop  # the searches below skip the filter: its keys are not the command's
    else:
        try:
            element = _top_element(buf, b"filter\x00", after, last)
        except _Unsure:
            return None
        if element is not None and element[0] == 0x03:
            id_type = filter_id_type(buf, element[1], element[2])
    # ... then its options, usually all absent: one search proves it.
    max_time_ms = comment = None
    options = 0
    if _find_option(buf, after, options_end) is not None:
        try:
            max_time_ms, options, comment = _find_options(buf, after, last)
        except (UnicodeDecodeError, _Unsure):
            return None
    return (request_id, flags, command, collection, database, end - pos, None, docs,
            max_time_ms, options, id_type, comment)  # fmt: skip


_NAMES: dict[bytes, tuple[str, str | None]] = {}
"""First elements seen (type, key, and the value if a string) -> (command, collection)."""
MAX_NAMES: Final = 4096


def _names(raw: bytes, key_end: int) -> tuple[str, str | None] | None:
    """Decode a first element into ``_NAMES``; None if it is not UTF-8."""
    try:
        command = raw[1:key_end].decode()
        collection = raw[key_end + 5 : -1].decode() if raw[0] == 0x02 else None
    except UnicodeDecodeError:
        return None
    if len(_NAMES) >= MAX_NAMES:  # the traffic picks the names: keep the cache bounded
        _NAMES.clear()
    names = _NAMES[raw] = (command, collection)
    return names


# Any of a find's options, which stats read and drivers rarely send (one regex search is
# cheaper than five ``find`` calls; each hit is then read exactly).
_find_option = re.compile(rb"maxTimeMS\x00|tailable\x00|awaitData\x00|noCursorTimeout\x00|comment\x00").search


def _find_options(buf: Buffer, pos: int, last: int) -> tuple[int | None, int, str | None]:
    """(maxTimeMS, cursor options, comment) of a find, from its elements after ``pos``."""
    max_time_ms = int_value(buf, _top_element(buf, b"maxTimeMS\x00", pos, last))
    options = 0
    for key, bit in _FIND_OPTIONS:
        if number_value(buf, _top_element(buf, key, pos, last)):
            options |= bit
    comment = _top_string(buf, b"\x02comment\x00", pos, last)
    if comment is None:
        comment = _top_string(buf, b"\x02$comment\x00", pos, last)
    return max_time_ms, options, comment


def request_summary(msg: OpMsg) -> RequestSummary:
    """The ``RequestSummary`` of a request decoded by the full decoder."""
    s = msg.summary
    docs = sum(q.count for q in msg.sequences) if msg.sequences else 0
    if s.command != "find":
        return (msg.request_id, msg.flag_bits, s.command, s.collection, s.database, msg.wire_size,
                msg.compressor, docs, None, 0, 0, None)  # fmt: skip
    return (msg.request_id, msg.flag_bits, s.command, s.collection, s.database, msg.wire_size, msg.compressor,
            docs, s.max_time_ms, s.cursor_options, s.filter_id_type, s.comment)  # fmt: skip


# -- replies --------------------------------------------------------------------------------------


def read_reply(buf: Buffer, pos: int, end: int, count: bool) -> ReplySummary | None:
    """Summarise the OP_MSG reply ``buf[pos:end]``; ``None`` hands it to the full decoder."""
    if end - pos < _MIN_FRAME:
        return None
    _, request_id, response_to, _, flags, kind, size = _START(buf, pos)
    start = pos + 21
    stop = start + size
    last = stop - 1
    if flags & _OTHER_REQUIRED_BITS or kind or size < 5 or stop > end or buf[last]:
        return None
    if stop != end:
        more, _ = _sections(buf, stop, end, False)
        if more < 0:
            return None
        size += more
    first = start + 4
    if buf.startswith(b"\x03cursor\x00", first, last):  # {cursor: {...}, ok: 1.0, ...}
        cursor = first + 8
        if last - cursor < 5:
            return None
        after = cursor + _I32(buf, cursor)[0]
        if after < cursor + 5 or after > last or buf[after - 1]:
            return None
        cursor_id, docs = _cursor(buf, cursor, after)
        if docs is None:  # not sure, or no batch (then "n" would count)
            return None
    elif buf.startswith(b"\x10n\x00", first, last) and last - first >= 7:  # {n: <int32>, ..., ok, ...}
        cursor_id, docs = None, _I32(buf, first + 3)[0]
        after = first + 7
        if buf.find(b"\x03cursor\x00", after, last) >= 0:  # a cursor would outrank "n"
            return None
    elif buf.startswith(_OK_1, first, last):  # {ok: 1.0, ...}: nothing else counts but a cursor or "n"
        after = first + 12
        find = buf.find
        if after != last and (find(b"cursor\x00", after, last) >= 0 or find(b"n\x00", after, last) >= 0):
            return None
        return (response_to, request_id, flags, size, 1.0, None, None, None, None, None)
    else:
        return None
    if buf.startswith(_OK_1, after, last):  # "ok" right after: the usual case
        return (response_to, request_id, flags, size, 1.0, None, None, cursor_id, docs, None)
    try:
        ok = number_value(buf, _top_element(buf, b"ok\x00", after, last))
    except _Unsure:
        return None
    if not ok:  # ok: 0 (a failure: the full decoder reads code and errmsg), or absent, or odd
        return None
    return (response_to, request_id, flags, size, float(ok), None, None, cursor_id, docs, None)


def _cursor(buf: Buffer, start: int, stop: int) -> tuple[int | None, int | None]:
    """(cursor id, batch length) of the cursor document ``buf[start:stop]``; (None, None): unsure.

    The server sends ``{firstBatch | nextBatch: [...], id: <int64>, ns: "..."}``: read by stepping,
    the batch counted by ``_count_batch``. Anything else is walked as the full decoder walks it.
    """
    last = stop - 1
    batch = start + 4
    array = 0
    if buf.startswith(b"\x04firstBatch\x00", batch, last):
        array = batch + 12
    elif buf.startswith(b"\x04nextBatch\x00", batch, last):
        array = batch + 11
    after = array + _I32(buf, array)[0] if array and last - array >= 5 else -1
    if array < after <= last - 12 and not buf[after - 1] and buf.startswith(b"\x12id\x00", after, last):
        docs = _count_batch(buf, array + 4, after - 1)
        # The first id follows the batch. A firstBatch wins whatever follows; a nextBatch only
        # if no firstBatch follows (the server never sends both).
        if docs >= 0 and (array == batch + 12 or buf.find(b"\x04firstBatch\x00", after, last) < 0):
            return _I64(buf, after + 4)[0], docs
    return _cursor_walk(buf, start, stop)


def _count_batch(buf: Buffer, pos: int, last: int) -> int:
    """Elements of the array whose elements run from ``pos`` to its terminator at ``last``.

    The tight loop for a batch of documents keyed "0", "1", ...: each key's NUL is at a known
    offset and each document is jumped over by its length. -1 for anything else.
    """
    count = 0
    width, wider_at = 1, 10  # digits of the next key, and the count at which keys gain one
    i32 = _I32
    try:  # an offset past the buffer ends the count (IndexError, struct.error): no check per document
        while pos < last:
            nul = pos + 1 + width
            if buf[pos] != 0x03 or buf[nul]:
                return -1
            pos = nul + 1 + i32(buf, nul + 1)[0]
            if pos < nul + 6 or buf[pos - 1]:  # a document is at least 5 bytes, and ends with NUL
                return -1
            count += 1
            if count == wider_at:
                width += 1
                wider_at *= 10
    except (IndexError, struct.error):
        return -1
    return count if pos == last else -1


def _cursor_walk(buf: Buffer, start: int, stop: int) -> tuple[int | None, int | None]:
    """The cursor document in any order, walked element by element as the full decoder does."""
    try:
        _, found = scan(buf, start, stop, _CURSOR_KEYS)
        batch = found.get(b"firstBatch") or found.get(b"nextBatch")
        docs = count_elements(buf, batch[1], batch[2]) if batch is not None and batch[0] == 0x04 else None
        return int_value(buf, found.get(b"id")), docs
    except MongoProtocolError:
        return None, None


def reply_summary(msg: OpMsg) -> ReplySummary:
    """The ``ReplySummary`` of a reply decoded by the full decoder."""
    s = msg.summary
    size = s.size + sum(q.size for q in msg.sequences) if msg.sequences else s.size
    failed = s.ok == 0.0
    return (msg.response_to, msg.request_id, msg.flag_bits, size, s.ok, s.code if failed else None,
            s.errmsg if failed else None, s.cursor_id, s.num_docs, msg.compressor)  # fmt: skip


REQUESTS: Final = SummaryReader(read_request, request_summary)
"""Summaries of client -> server messages."""
REPLIES: Final = SummaryReader(read_reply, reply_summary)
"""Summaries of server -> client messages."""
