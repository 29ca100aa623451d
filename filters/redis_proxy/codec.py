"""RESP decoders for the Redis proxy, sans-IO: bytes in, commands or reply frames out.

Nothing here touches a socket, asyncio or stats. ``feed(data)`` only buffers; ``next()`` returns
the next complete item or ``NEED_DATA``. The shared vocabulary (``NEED_DATA``,
``RespProtocolError``, ``RespError``, the encoders) is in ``filters.redis_proxy.resp``. One exception type,
``RespProtocolError``, means "the peer broke the protocol": the caller closes the connection
(Envoy counts ``downstream_cx_protocol_error``). Any other exception is a bug here. After a
protocol error a decoder raises the same error on every call.

Protocol: RESP2 (https://redis.io/docs/latest/develop/reference/protocol-spec/) and, for
replies, RESP3 (https://github.com/redis/redis-specifications/blob/master/protocol/RESP3.md).

**Requests** (``RequestDecoder``): a client sends an array of bulk strings
(``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``), or an inline command (``PING\\r\\n``, split on
blanks with redis-server's quoting rules, ``sdssplitargs``). Anything else is a protocol error:
another type at top level, a nested or non-bulk element, a null bulk, a negative, non-canonical
(``$03``, ``$+3``) or oversized length, a payload not followed by CRLF. ``*0`` yields ``[]``
(Envoy answers it ``invalid request``). Blank inline lines are skipped, as redis-server does.

hiredis (C) parses the arrays, but it is lax: it takes ``+foo`` elements for bulk strings, does
not check the CRLF after a payload (``$3\r\nfooXX`` parses) and would wait for a declared
``$99999999999``. So a command hiredis returns is accepted only if the buffered bytes are exactly
its canonical encoding (``pack_command``, also C), which holds only for a well-formed array of
bulk strings, and the frame is no longer than every cap (a bigger one is scanned). A command
that arrives over several reads is checked header by header by a resumable pure-Python scanner
as its bytes come in, which enforces the ``MAX_*`` caps before the data is buffered, so results
do not depend on how the input is split. Inline commands are parsed in Python.

**Replies** (``ReplyDecoder``): ``next_raw()`` returns the exact bytes of one complete reply, so a
reply is relayed to the client verbatim. Two mechanisms find frame boundaries:

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

Benchmark (``tests/unit/test_resp_codec.py::test_benchmark --run-slow``: CPython 3.11.7, hiredis
3.5.0, a shared 2-vCPU dev box at a quiet moment, best of 7 interleaved runs; 10,000 items fed
in 64 KiB reads; under load every number grows 2-4x but the ratios hold):

===============================  =============  ==============  =====================================
relaying replies                 ``next_raw``   scanner only    hiredis parse + re-encode (not exact)
===============================  =============  ==============  =====================================
``+OK`` / ``:n`` / ``$16`` mix   0.87 us        0.94 us         0.40 us
``*10`` arrays of ``$16``        2.9 us         9.6 us          4.6 us
one 16 MiB bulk                  3.6 ms         3.4 ms          22.6 ms
===============================  =============  ==============  =====================================

Re-encoding hiredis values is fastest for small scalars but cannot be verbatim (it returns
``+OK`` and ``$2 OK`` alike and decodes error text), so it is only used where the check above
proves the bytes equal. Requests (``SET key:42 <16 bytes>``): 1.8 us per command, against 2.6 us
for the bare minimum of a pure-Python parser and 0.2 us for hiredis alone, unchecked.

Feed reads of ordinary size (64-256 KiB): hiredis moves its unread bytes down each time it has
consumed 1 KiB, so a single multi-megabyte ``feed`` of small commands costs O(n^2) inside it.

Buffering: received chunks are queued and joined only when the decoder can make progress (a
decoder that knows it needs N more bytes returns ``NEED_DATA`` without looking), and the scanned
part of a partly received reply is set aside, so input is copied and scanned O(1) times however
it is split. Caps on incomplete input, with the reason for each default, are the ``MAX_*``
constants.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final, Literal

import hiredis

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
    split_inline,
)

# -- limits -----------------------------------------------------------------------------------

#: Largest bulk string accepted: redis-server's ``proto-max-bulk-len`` default (512 MiB).
MAX_BULK_LEN: Final = 512 * 1024 * 1024
#: Most elements in one request array. redis-server allows INT_MAX; a million arguments is
#: already far past real use (MSET of 500k pairs) and bounds the per-command list we build.
MAX_ARRAY_LEN: Final = 1024 * 1024
#: Most bytes in one request: redis-server's ``client-query-buffer-limit`` default (1 GiB).
MAX_REQUEST_SIZE: Final = 1024 * 1024 * 1024
#: Longest inline command line: redis-server's ``PROTO_INLINE_MAX_SIZE`` (64 KiB).
MAX_INLINE_LEN: Final = 64 * 1024
#: Most elements declared by one reply aggregate header. Redis has no limit below 2**63; 2**32
#: still catches garbage lengths without refusing any real reply (KEYS * on a huge db).
MAX_REPLY_ELEMENTS: Final = 2**32
#: Longest reply line (simple string, error, double, big number). Redis sends long data as bulk
#: strings; Lua ``error_reply`` text is the longest line seen in practice.
MAX_REPLY_LINE: Final = 1024 * 1024
#: A length header is ``*``/``$`` plus at most 20 characters; more without CRLF is garbage.
_MAX_HEADER: Final = 24

# RESP type bytes a request may not start with (they are not inline commands either).
_TYPE_BYTES: Final = frozenset(b"$+-:_,#!=(%~>|")
# Frames that hiredis would decode differently from us: errors (lossy text), blob errors,
# verbatim strings, attributes and big numbers. Over-approximate on purpose (a bulk payload
# may match too); a match only sends the frame down the slower pure-Python path.
_NOT_FOR_HIREDIS: Final = re.compile(rb"\r\n[-!=|(]")
# Reply types whose frames are checked against hiredis's re-encoding instead of scanned.
_FAST_TYPES: Final = frozenset(b"+$:*")


class _Buffer:
    """Received bytes: ``buf[pos:]`` not yet consumed, then ``chunks`` not yet joined to it."""

    __slots__ = ("buf", "chunks", "error", "need", "pending", "pos")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0
        self.chunks: list[bytes] = []
        self.pending = 0  # bytes in chunks
        self.need = 0  # bytes needed from pos before parsing is worth retrying
        self.error: RespProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        chunk = bytes(data)  # no copy for bytes; the caller may reuse a bytearray
        if chunk:
            self.chunks.append(chunk)
            self.pending += len(chunk)
        return chunk

    def ready(self) -> bool:
        """Join queued chunks if enough bytes are there to make progress; False if not."""
        if self.error is not None:
            raise self.error
        available = len(self.buf) - self.pos + self.pending
        if available < self.need or available == 0:
            return False
        chunks = self.chunks
        if not chunks:
            return True
        if self.pos == len(self.buf) and len(chunks) == 1:
            self.buf = chunks[0]  # the common case: everything before was consumed
        else:
            chunks.insert(0, self.buf[self.pos :])
            self.buf = b"".join(chunks)
        self.pos = 0
        chunks.clear()
        self.pending = 0
        return True

    def fail(self, message: str) -> RespProtocolError:
        self.error = RespProtocolError(message)
        return self.error


def _length(buf: bytes, start: int, stop: int) -> int:
    """A canonical non-negative decimal in ``buf[start:stop]``, or -1 if it is not one."""
    text = buf[start:stop]
    if text.isdigit() and (text[0] != 48 or stop - start == 1):
        return int(text)
    return -1


# -- requests ---------------------------------------------------------------------------------


class RequestDecoder:
    """Decodes client commands: arrays of bulk strings, or inline commands."""

    __slots__ = (
        "_frames",
        "_in",
        "_left",
        "_max_array",
        "_max_bulk",
        "_max_inline",
        "_max_request",
        "_queue",
        "_reader",
        "_size",
    )

    def __init__(
        self,
        *,
        max_bulk_len: int = MAX_BULK_LEN,
        max_array_len: int = MAX_ARRAY_LEN,
        max_request_size: int = MAX_REQUEST_SIZE,
        max_inline_len: int = MAX_INLINE_LEN,
        keep_frames: bool = False,
    ) -> None:
        self._in = _Buffer()
        self._reader = hiredis.Reader()  # fed everything; parses the arrays
        self._left = 0  # elements the scanner still owes for a command spanning reads
        self._size = 0  # bytes of that command scanned so far
        self._queue: deque[list[bytes]] = deque()  # complete commands not yet returned
        # With keep_frames, each queued command's exact bytes, when the fast path had them.
        self._frames: deque[bytes | None] | None = deque() if keep_frames else None
        self._max_bulk = max_bulk_len
        self._max_array = max_array_len
        self._max_request = max_request_size
        self._max_inline = max_inline_len

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copied if not ``bytes``, so the caller may reuse its buffer)."""
        self._reader.feed(self._in.feed(data))

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a command (for ``rx_bytes_buffered``)."""
        ib = self._in
        queued = sum(len(arg) for command in self._queue for arg in command)
        return len(ib.buf) - ib.pos + ib.pending + self._size + queued

    def next(self) -> list[bytes] | Literal[NeedData.NEED_DATA]:
        """The next command as a list of bulk strings, or ``NEED_DATA``.

        Raises ``RespProtocolError`` on invalid input (after returning the commands before it),
        and again on every later call.
        """
        queue = self._queue
        if queue:
            return queue.popleft()
        if self._in.ready():
            try:
                self._parse()
            except RespProtocolError:
                if not queue:
                    raise
            if queue:
                return queue.popleft()
        return NEED_DATA

    def next_with_frame(self) -> tuple[list[bytes], bytes | None] | Literal[NeedData.NEED_DATA]:
        """Like ``next``, with the command's exact bytes when they are at hand, else None.

        Only for a decoder made with ``keep_frames=True`` (use either this or ``next``). The bytes
        are there for a canonical array of bulk strings received within one read, the common
        case, so a proxy can forward the command as it came without encoding it again; they are
        None for inline commands and commands that spanned reads or were scanned.
        """
        queue = self._queue
        if not queue:
            if not self._in.ready():
                return NEED_DATA
            try:
                self._parse()
            except RespProtocolError:
                if not queue:
                    raise
            if not queue:
                return NEED_DATA
        frames = self._frames
        assert frames is not None, "next_with_frame needs RequestDecoder(keep_frames=True)"
        return queue.popleft(), frames.popleft()

    def _parse(self) -> None:
        """Queue every complete command in the buffer (one loop per read, not per command)."""
        ib = self._in
        buf = ib.buf
        pos = ib.pos
        end = len(buf)
        gets = self._reader.gets
        pack = hiredis.pack_command
        startswith = buf.startswith
        append = self._queue.append
        frames = self._frames
        # A canonical frame no longer than every cap cannot break one: no need to scan it.
        fast_limit = min(self._max_bulk, self._max_array, self._max_request)
        while pos < end:
            if self._left:  # a command arriving over several reads
                if not self._scan(buf, pos):
                    return
                command = self._reader.gets()
                if not isinstance(command, list):
                    raise ib.fail("invalid request")  # unreachable unless the parsers disagree
                append(command)
                if frames is not None:
                    frames.append(None)
                pos = ib.pos
                continue
            if buf[pos] != 42:  # not '*': an inline command
                args = self._inline(buf, pos)
                if args is None:
                    return
                if args:  # a blank line is ignored, as redis-server does
                    append(args)
                    if frames is not None:
                        frames.append(None)
                pos = ib.pos
                gets = self._reader.gets
                continue
            try:
                command = gets()
            except hiredis.HiredisError:
                command = None
            if command is False:  # incomplete: check it as it arrives
                ib.pos = pos
                self._size = 0
                self._left = 1
                if not self._scan(buf, pos):
                    return
                continue
            if command is not None:
                try:
                    frame = pack(tuple(command))
                except TypeError:  # a nested aggregate, a null, an error...
                    frame = b""
                if frame and len(frame) <= fast_limit and startswith(frame, pos):
                    pos += len(frame)
                    append(command)
                    if frames is not None:
                        frames.append(frame)
                    continue
            # Not canonical, or big enough that a cap may apply: the scanner decides.
            ib.pos = pos
            self._size = 0
            self._left = 1
            if not self._scan(buf, pos) or command is None:
                raise ib.fail("invalid request")  # unreachable unless the parsers disagree
            append(command)
            if frames is not None:
                frames.append(None)
            pos = ib.pos
        ib.pos = pos
        ib.need = 0

    def _scan(self, buf: bytes, pos: int) -> bool:
        """Check owed headers of a command from ``pos``; True when it is complete.

        Scanned bytes are dropped from the buffer (hiredis holds its own copy); on running out
        of data, ``need`` says how many bytes the next element needs.
        """
        ib = self._in
        end = len(buf)
        left = self._left
        start = pos
        need = 0
        while left:
            if pos >= end:
                need = 1
                break
            nl = buf.find(b"\r\n", pos + 1, pos + _MAX_HEADER)
            if nl < 0:
                if end - pos >= _MAX_HEADER:
                    raise ib.fail("invalid length header")
                need = end - pos + 1
                break
            t = buf[pos]
            size = _length(buf, pos + 1, nl)
            if self._size == 0 and pos == start and t == 42:  # the command's own header
                if size < 0:
                    raise ib.fail(f"invalid multibulk length {buf[pos + 1 : nl]!r}")
                if size > self._max_array:
                    raise ib.fail(f"multibulk length {size} exceeds {self._max_array}")
                left = size
                pos = nl + 2
                self._size = pos - start
                start = pos
                continue
            if t != 36:
                raise ib.fail(f"expected '$', got {chr(t)!r}")
            if size < 0:
                raise ib.fail(f"invalid bulk length {buf[pos + 1 : nl]!r}")
            if size > self._max_bulk:
                raise ib.fail(f"bulk length {size} exceeds {self._max_bulk}")
            stop = nl + 2 + size
            if stop + 2 > end:
                need = stop + 2 - pos
                break
            if buf[stop : stop + 2] != b"\r\n":
                raise ib.fail("bulk string not terminated by CRLF")
            pos = stop + 2
            left -= 1
        self._left = left
        self._size += pos - start
        ib.pos = pos
        if left:
            if self._size + need > self._max_request:
                raise ib.fail(f"request larger than {self._max_request} bytes")
            ib.need = need
            return False
        ib.need = 0
        self._size = 0
        return True

    def _inline(self, buf: bytes, pos: int) -> list[bytes] | None:
        ib = self._in
        if buf[pos] in _TYPE_BYTES:
            raise ib.fail(f"expected '*', got {chr(buf[pos])!r}")
        nl = buf.find(b"\n", pos, pos + self._max_inline + 1)
        if nl < 0:
            if len(buf) - pos > self._max_inline:
                raise ib.fail("too big inline request")
            ib.pos = pos
            ib.need = len(buf) - pos + 1
            return None
        line = buf[pos : nl - 1] if nl > pos and buf[nl - 1] == 13 else buf[pos:nl]
        try:
            args = split_inline(line)
        except RespProtocolError as exc:
            ib.error = exc
            raise
        ib.pos = nl + 1
        ib.need = 0
        # hiredis cannot skip an inline command: restart it on what follows.
        self._reader = hiredis.Reader()
        if ib.pos < len(buf):
            self._reader.feed(buf, ib.pos)
        return args


# -- replies ----------------------------------------------------------------------------------


class ReplyDecoder:
    """Decodes replies from an upstream server: raw frames (``next_raw``) or values (``next``)."""

    __slots__ = (
        "_decoder",
        "_frames",
        "_in",
        "_left",
        "_max_bulk",
        "_max_elements",
        "_max_line",
        "_odd",
        "_pieces",
        "_reader",
    )

    def __init__(
        self,
        *,
        max_bulk_len: int = MAX_BULK_LEN,
        max_elements: int = MAX_REPLY_ELEMENTS,
        max_line: int = MAX_REPLY_LINE,
    ) -> None:
        self._in = _Buffer()
        self._left = 0  # elements owed by a partly received frame (0: between frames)
        self._pieces: list[bytes] = []  # its bytes scanned so far
        self._frames: deque[bytes] = deque()  # complete frames not yet returned
        self._max_bulk = max_bulk_len
        self._max_elements = max_elements
        self._max_line = max_line
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
        if frames:
            return frames.popleft()
        if self._in.ready():
            try:
                self._scan_frames()
            except RespProtocolError:
                if not frames:
                    raise
            if frames:
                return frames.popleft()
        return NEED_DATA

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
        max_line = self._max_line
        pack = hiredis.pack_command
        # A canonical frame no longer than every cap cannot break one: no need to scan it.
        fast_limit = min(self._max_bulk, self._max_elements, max_line)
        need = 0
        reader = self._reader
        consumed = False  # hiredis has already consumed the frame being scanned
        while True:
            if not left:  # between frames
                if p >= end:
                    break
                t = buf[p]
                if t in _FAST_TYPES:  # + $ : *: hiredis parses, then its re-encoding must be the input
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
