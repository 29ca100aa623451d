"""RESP decoders for the Redis proxy, sans-IO: bytes in, commands or reply frames out.

Nothing here touches a socket, asyncio or stats. ``feed(data)`` only buffers; ``next()`` returns
the next complete item or ``NEED_DATA``; ``RequestDecoder.take`` and ``ReplyDecoder.take_raw``
return every complete item at once (one call per read: what the proxy uses). The shared
vocabulary (``NEED_DATA``, ``RespProtocolError``, ``RespError``, the encoders) is in
``filters.redis_proxy.resp``. One exception type, ``RespProtocolError``, means "the peer broke
the protocol": the caller closes the connection (Envoy counts ``downstream_cx_protocol_error``).
Any other exception is a bug here. After a protocol error a decoder raises the same error on
every call (and ``error`` holds it).

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

**Replies** (``ReplyDecoder``) are in ``reply_codec.py``; they share this module's buffer and
caps.

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

from collections import deque
from typing import Final, Literal

import hiredis

from filters.redis_proxy.resp import (
    NEED_DATA,
    NeedData,
    RespProtocolError,
    split_inline,
)

_pack_command: Final = hiredis.pack_command

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
#: A length header is ``*``/``$`` plus at most 20 characters; more without CRLF is garbage.
_MAX_HEADER: Final = 24

# RESP type bytes a request may not start with (they are not inline commands either).
_TYPE_BYTES: Final = frozenset(b"$+-:_,#!=(%~>|")


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

    def has_input(self, fast: bool = True) -> bool:
        """``ready()`` with the usual read taken first (the buffer used up, one chunk came;
        only when ``fast``): True when there is anything to parse."""
        chunks = self.chunks
        if fast and self.pos == len(self.buf) and len(chunks) == 1 and self.error is None:
            self.buf = chunks[0]
            self.pos = 0
            chunks.clear()
            self.pending = 0
            return True
        if not chunks and self.error is None:
            return False
        return self.ready()

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

_NOTHING: Final[tuple[deque[list[bytes]], deque[bytes | None]]] = (deque(), deque())  # never appended to


class RequestDecoder:
    """Decodes client commands: arrays of bulk strings, or inline commands."""

    __slots__ = (
        "_fast_limit",
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
        "error",
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
        #: The protocol error found in the input, if any (every later call raises it).
        self.error: RespProtocolError | None = None
        self._reader = hiredis.Reader()  # fed everything; parses the arrays
        self._left = 0  # elements the scanner still owes for a command spanning reads
        self._size = 0  # bytes of that command scanned so far
        self._queue: deque[list[bytes]] = deque()  # complete commands not yet returned
        # With keep_frames, each queued command's exact bytes, when the fast path had them.
        self._frames: deque[bytes | None] | None = deque() if keep_frames else None
        self._max_bulk = max_bulk_len
        self._max_array = max_array_len
        self._max_request = max_request_size
        # A canonical frame no longer than every cap cannot break one: no need to scan it.
        self._fast_limit = min(max_bulk_len, max_array_len, max_request_size)
        self._max_inline = max_inline_len

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copied if not ``bytes``, so the caller may reuse its buffer)."""
        chunk = data if data.__class__ is bytes else bytes(data)
        if chunk:  # _Buffer.feed, inlined: this runs once per downstream read
            ib = self._in
            ib.chunks.append(chunk)
            ib.pending += len(chunk)
            self._reader.feed(chunk)

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
        if queue or self._parsed(self._in.ready()):
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
        if not queue and not self._parsed(self._in.ready()):
            return NEED_DATA
        frames = self._frames
        assert frames is not None, "next_with_frame needs RequestDecoder(keep_frames=True)"
        return queue.popleft(), frames.popleft()

    def take(self, limit: int) -> tuple[deque[list[bytes]], deque[bytes | None]]:
        """Every complete command (at most ``limit``) and, in step, its exact bytes or None.

        The batch form of ``next_with_frame`` (one call per read instead of one per command);
        only for a decoder made with ``keep_frames=True``. Returns empty sequences when no command
        is complete. Raises ``RespProtocolError`` on invalid input only when no command precedes
        it; otherwise the commands before it come back and ``error`` is set, and the next call
        raises.
        """
        queue = self._queue
        if not queue and not self._parsed(self._in.has_input()):
            return _NOTHING
        frames = self._frames
        assert frames is not None, "take needs RequestDecoder(keep_frames=True)"
        if len(queue) <= limit:  # hand the queues over whole: no copy
            self._queue = deque()
            self._frames = deque()
            return queue, frames
        popleft, pop_frame = queue.popleft, frames.popleft
        return deque(popleft() for _ in range(limit)), deque(pop_frame() for _ in range(limit))

    def _parsed(self, has_input: bool) -> bool:
        """Parse the buffered input into the queue (when ``has_input``); True if a command is
        queued. A protocol error is raised at once when no command precedes it, else it is kept
        in ``error`` (and raised by the next call, once the queue is empty)."""
        if not has_input:
            return False
        try:
            self._parse()
        except RespProtocolError as exc:
            self.error = exc
            if not self._queue:
                raise
        return bool(self._queue)

    def _parse(self) -> None:
        """Queue every complete command in the buffer (one loop per read, not per command)."""
        ib = self._in
        buf = ib.buf
        pos = ib.pos
        end = len(buf)
        gets = self._reader.gets
        pack = _pack_command
        startswith = buf.startswith
        append = self._queue.append
        frames = self._frames
        fast_limit = self._fast_limit
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
            t = buf[pos]
            own_header = self._size == 0 and pos == start and t == 42
            if t != 36 and not own_header:  # wrong at once, whatever follows (as hiredis says)
                raise ib.fail(f"expected '$', got {chr(t)!r}")
            nl = buf.find(b"\r\n", pos + 1, pos + _MAX_HEADER)
            if nl < 0:
                if end - pos >= _MAX_HEADER:
                    raise ib.fail("invalid length header")
                need = end - pos + 1
                break
            size = _length(buf, pos + 1, nl)
            if own_header:  # the command's own header
                if size < 0:
                    raise ib.fail(f"invalid multibulk length {buf[pos + 1 : nl]!r}")
                if size > self._max_array:
                    raise ib.fail(f"multibulk length {size} exceeds {self._max_array}")
                left = size
                pos = nl + 2
                self._size = pos - start
                start = pos
                continue
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
