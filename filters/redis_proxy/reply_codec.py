"""RESP reply decoder for the Redis proxy, sans-IO: upstream bytes in, reply frames out.

Shares ``codec.py``'s buffer, caps and error rules (read its docstring first).

**Replies** (``ReplyDecoder``): ``next_raw()`` returns the exact bytes of one complete reply, so a
reply is relayed to the client verbatim. Two mechanisms find frame boundaries:

* A ``$`` or ``+`` reply while hiredis is not in use (no array reply since the last partial
  frame: GET/SET traffic) is delimited in pure Python with the scanner's own checks, about a
  third cheaper than the hiredis round trip below.
* For ``+``, ``$``, ``:`` and ``*`` replies, hiredis parses the next reply and the frame it
  implies is rebuilt in C (``pack_command`` for an array of bulk strings, one ``%`` format for a
  scalar); if the buffered bytes start with exactly that frame, that is the reply. This is the
  same canonical-bytes check as for requests, so it never accepts a frame the scanner would not.
* Anything else (errors, arrays holding non-bulk items, RESP3, frames that span reads or exceed
  a cap) goes to a pure-Python frame scanner: it walks headers, counts the elements still owed
  by aggregates (``*``, ``~``, ``>``: n; ``%``: 2n; an attribute ``|``: 2n plus the value it
  annotates) and jumps over blob payloads (``$``, ``!``, ``=``) by their length, validating each
  header. It is resumable, and a frame that spans reads is scanned once, however it is split.

``next()`` returns the reply as a value: ``bytes`` (simple or bulk string), ``int``, ``None``
(null), ``RespError`` (an error reply: a value to relay, not an exception), ``list``, and for
RESP3 ``float``, ``bool``, ``dict`` (map; sets and pushes are lists, attributes are skipped,
verbatim strings lose their ``txt:`` prefix). Aggregates are parsed by hiredis from the
validated frame, except frames that may hold types hiredis decodes differently (errors, whose
text it decodes lossily; ``!``, ``=``, ``|``, ``(``), which take a pure-Python path.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final, Literal

import hiredis

from filters.redis_proxy.codec import (
    MAX_BULK_LEN,
    _Buffer,
    _length,
    _pack_command,
)
from filters.redis_proxy.resp import (
    _AGGREGATE_FACTOR,
    _DOUBLE,
    NEED_DATA,
    NULL_ARRAY,
    NULL_BULK,
    NeedData,
    ReplyValue,
    RespError,
    RespProtocolError,
    _is_integer,
    parse_value,
)

# -- limits and types -------------------------------------------------------------------------

#: Most elements declared by one reply aggregate header. Redis has no limit below 2**63; 2**32
#: still catches garbage lengths without refusing any real reply (KEYS * on a huge db).
MAX_REPLY_ELEMENTS: Final = 2**32
#: Longest reply line (simple string, error, double, big number). Redis sends long data as bulk
#: strings; Lua ``error_reply`` text is the longest line seen in practice.
MAX_REPLY_LINE: Final = 1024 * 1024
# Frames that hiredis would decode differently from us: errors (lossy text), blob errors,
# verbatim strings, attributes and big numbers. Over-approximate on purpose (a bulk payload
# may match too); a match only sends the frame down the slower pure-Python path.
_NOT_FOR_HIREDIS: Final = re.compile(rb"\r\n[-!=|(]")
# Reply types whose frames are checked against hiredis's re-encoding instead of scanned.
_FAST_TYPES: Final = frozenset(b"+$:*")

_NO_FRAMES: Final[deque[bytes]] = deque()  # never appended to


class ReplyDecoder:
    """Decodes replies from an upstream server: raw frames (``next_raw``) or values (``next``)."""

    __slots__ = (
        "_decoder",
        "_fast_limit",
        "_frames",
        "_in",
        "_left",
        "_max_bulk",
        "_max_elements",
        "_max_line",
        "_odd",
        "_pieces",
        "_reader",
        "error",
    )

    def __init__(
        self,
        *,
        max_bulk_len: int = MAX_BULK_LEN,
        max_elements: int = MAX_REPLY_ELEMENTS,
        max_line: int = MAX_REPLY_LINE,
    ) -> None:
        self._in = _Buffer()
        #: The protocol error found in the input, if any (every later call raises it).
        self.error: RespProtocolError | None = None
        self._left = 0  # elements owed by a partly received frame (0: between frames)
        self._pieces: list[bytes] = []  # its bytes scanned so far
        self._frames: deque[bytes] = deque()  # complete frames not yet returned
        self._max_bulk = max_bulk_len
        self._max_elements = max_elements
        self._max_line = max_line
        # A canonical frame no longer than every cap cannot break one: no need to scan it.
        self._fast_limit = min(max_bulk_len, max_elements, max_line)
        # hiredis, fed from the first array reply on and kept at our frame boundary, parses
        # array replies in C; None until needed again after a partial or odd frame.
        self._reader: hiredis.Reader | None = None
        self._odd = False  # the frame being scanned holds a type hiredis handles differently
        self._decoder: hiredis.Reader | None = None  # for decode_frame

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copied if not ``bytes``, so the caller may reuse its buffer)."""
        chunk = self._in.feed(data)
        if self._reader is not None:
            self._reader.feed(chunk)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned."""
        ib = self._in
        queued = sum(map(len, self._frames)) + sum(map(len, self._pieces))
        return len(ib.buf) - ib.pos + ib.pending + queued

    def next(self) -> ReplyValue | Literal[NeedData.NEED_DATA]:
        """The next reply as a value (see the module docstring), or ``NEED_DATA``."""
        frame = self.next_raw()
        if frame is NEED_DATA:
            return frame
        return self.decode_frame(frame)

    def next_raw(self) -> bytes | Literal[NeedData.NEED_DATA]:
        """The exact bytes of the next complete reply, or ``NEED_DATA``.

        Raises ``RespProtocolError`` on invalid input (after returning the replies before it),
        and again on every later call.
        """
        frames = self._frames
        if frames or self._scanned(self._in.ready()):
            return frames.popleft()
        return NEED_DATA

    def take_raw(self) -> deque[bytes]:
        """The exact bytes of every complete reply, in order (possibly none).

        The batch form of ``next_raw`` (one call per read instead of one per reply). Raises
        ``RespProtocolError`` on invalid input only when no reply precedes it; otherwise the
        replies before it come back, ``error`` is set, and the next call raises.
        """
        frames = self._frames
        if not frames and not self._scanned(self._in.has_input(fast=not self._left)):
            return _NO_FRAMES
        self._frames = deque()
        return frames

    def _scanned(self, has_input: bool) -> bool:
        """Queue the complete frames of the buffered input (when ``has_input``); True if a frame
        is queued. A protocol error is raised at once when no frame precedes it, else it is kept
        in ``error`` (and raised by the next call, once the queue is empty)."""
        if not has_input:
            return False
        try:
            self._scan_frames()
        except RespProtocolError as exc:
            self.error = exc
            if not self._frames:
                raise
        return bool(self._frames)

    def _scan_frames(self) -> None:
        """Queue every complete frame in the buffer (one tight loop: the per-call setup is paid
        once per read, not once per reply)."""
        ib = self._in
        buf = ib.buf
        start = p = ib.pos
        end = len(buf)
        left = self._left
        pieces = self._pieces
        frames_append = self._frames.append
        find = buf.find
        max_bulk = self._max_bulk
        max_line = self._max_line
        pack = _pack_command
        fast_limit = self._fast_limit
        need = 0
        reader = self._reader
        consumed = False  # hiredis has already consumed the frame being scanned
        while True:
            if not left:  # between frames
                if p >= end:
                    break
                t = buf[p]
                if reader is None and (t == 36 or t == 43):
                    # A bulk or simple string while hiredis is not in use (no array reply since
                    # the last partial frame): its boundary in pure Python is cheaper than a
                    # hiredis parse plus re-encoding. The same checks as the scanner below; an
                    # incomplete or unusual frame falls through to it.
                    nl = find(b"\r\n", p + 1, p + max_line)
                    if nl > 0:
                        if t == 43:
                            frames_append(buf[p : nl + 2])
                            p = nl + 2
                            continue
                        text = buf[p + 1 : nl]
                        if text.isdigit() and (text[0] != 48 or nl - p == 2):
                            stop = nl + 4 + int(text)
                            if stop <= end and stop - nl - 4 <= max_bulk and buf[stop - 2 : stop] == b"\r\n":
                                frames_append(buf[p:stop])
                                p = stop
                                continue
                elif t in _FAST_TYPES:  # + $ : *: hiredis parses, then its re-encoding must be the input
                    if reader is None:
                        reader = self._reader = hiredis.Reader()
                        reader.feed(buf, p)
                    try:
                        value = reader.gets()
                    except (hiredis.HiredisError, TypeError):  # TypeError: a map keyed by a list
                        value = False
                    if value is False:  # partial (or odd): the scanner takes it from here
                        reader = self._reader = None
                    else:
                        consumed = True
                        try:
                            if t == 43:
                                frame = b"+%b\r\n" % value
                            elif t == 36:
                                frame = NULL_BULK if value is None else b"$%d\r\n%b\r\n" % (len(value), value)
                            elif t == 58:
                                frame = b":%d\r\n" % value
                            else:
                                frame = NULL_ARRAY if value is None else pack(tuple(value))
                        except TypeError:  # an aggregate holding nulls, errors, arrays...
                            frame = b""
                        if frame and len(frame) <= fast_limit and buf.startswith(frame, p):
                            frames_append(frame)
                            p += len(frame)
                            consumed = False
                            continue
                start = p
                left = 1
            if p >= end:
                need = 1
                break
            nl = find(b"\r\n", p + 1, p + max_line)
            if nl < 0:
                if end - p >= max_line:
                    raise ib.fail(f"reply line longer than {max_line} bytes")
                need = end - p + 1
                break
            t = buf[p]
            if t == 43 or t == 45:  # + -: one line of text
                p = nl + 2
                left -= 1
            elif t == 36 or t == 33 or t == 61:  # $ ! =: length, CRLF, payload, CRLF
                if t == 33:
                    self._odd = True
                text = buf[p + 1 : nl]
                if text.isdigit() and (text[0] != 48 or nl - p == 2):
                    size = int(text)
                    if size > self._max_bulk:
                        raise ib.fail(f"bulk length {size} exceeds {self._max_bulk}")
                    stop = nl + 2 + size
                    if stop + 2 > end:
                        need = stop + 2 - p
                        break
                    if buf[stop : stop + 2] != b"\r\n":
                        raise ib.fail("bulk string not terminated by CRLF")
                    p = stop + 2
                elif t == 36 and text == b"-1":  # the RESP2 null bulk
                    p = nl + 2
                else:
                    raise ib.fail(f"invalid bulk length {text!r}")
                left -= 1
            elif t == 58:  # : integer
                if not _is_integer(buf[p + 1 : nl]):
                    raise ib.fail(f"invalid integer {buf[p + 1 : nl]!r}")
                p = nl + 2
                left -= 1
            else:
                left = self._scan_other(buf, p, nl, t, left)
                p = nl + 2
            if not left:  # a frame is complete
                if pieces:
                    pieces.append(buf[start:p])
                    frames_append(b"".join(pieces))
                    pieces.clear()
                else:
                    frames_append(buf[start:p])
                if reader is not None:  # keep hiredis at the same frame boundary
                    if self._odd:  # it would split an attribute or choke on a blob error
                        reader = self._reader = None
                    elif not consumed:
                        try:
                            reader.gets()
                        except (hiredis.HiredisError, TypeError):
                            reader = self._reader = None
                consumed = False
                self._odd = False
        ib.pos = p
        self._left = left
        ib.need = need
        if left:
            self._reader = None  # stop copying into hiredis until the next frame boundary
            if p > start:
                # Incomplete: set its scanned bytes aside so they are not joined again.
                pieces.append(buf[start:p])

    def _scan_other(self, buf: bytes, p: int, nl: int, t: int, left: int) -> int:
        """Headers other than ``$ ! = + - :``; returns the updated owed count."""
        ib = self._in
        if t in _AGGREGATE_FACTOR or t == 124:  # * ~ > % |
            count = _length(buf, p + 1, nl)
            if count < 0:
                if t == 42 and buf[p + 1 : nl] == b"-1":  # the RESP2 null array
                    return left - 1
                raise ib.fail(f"invalid aggregate length {buf[p + 1 : nl]!r}")
            if count > self._max_elements:
                raise ib.fail(f"aggregate length {count} exceeds {self._max_elements}")
            if t == 124:  # an attribute: its pairs, then the value it annotates
                self._odd = True
                return left + 2 * count
            return left - 1 + _AGGREGATE_FACTOR[t] * count
        text = buf[p + 1 : nl]
        if t == 95:  # _ null
            valid = not text
        elif t == 35:  # # boolean
            valid = text == b"t" or text == b"f"
        elif t == 44:  # , double
            valid = _DOUBLE.fullmatch(text) is not None
        elif t == 40:  # ( big number
            valid = _is_integer(text)
        else:
            raise ib.fail(f"invalid reply type byte {chr(t)!r}")
        if not valid:
            raise ib.fail(f"invalid {chr(t)!r} value {text!r}")
        return left - 1

    def decode_frame(self, frame: bytes) -> ReplyValue:
        """The value of one complete frame as returned by ``next_raw``."""
        t = frame[0]
        if t == 36:  # $
            return None if frame[1] == 45 else frame[frame.index(b"\r\n") + 2 : -2]
        if t == 43:  # +
            return frame[1:-2]
        if t == 58:  # :
            return int(frame[1:-2])
        if t == 45:  # -
            return RespError(frame[1:-2])
        if t in _AGGREGATE_FACTOR and _NOT_FOR_HIREDIS.search(frame) is None:
            decoder = self._decoder
            if decoder is None:
                decoder = self._decoder = hiredis.Reader()
            try:
                decoder.feed(frame)
                value: ReplyValue = decoder.gets()
                return value
            except (hiredis.HiredisError, TypeError):  # e.g. a map keyed by an aggregate
                self._decoder = None
        return parse_value(frame)
