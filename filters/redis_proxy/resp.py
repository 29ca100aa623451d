"""The RESP vocabulary shared by the Redis proxy's decoders and filter: types and encoders.

* ``NEED_DATA`` (a decoder has no complete item yet), ``RespProtocolError`` (the peer broke the
  protocol), ``RespError`` (an error *reply*: a value to relay, not an exception) and
  ``ReplyValue`` (what ``ReplyDecoder.next()`` returns).
* Encoders that return ``bytes``: commands for upstream, replies for clients. Envoy's own
  errors go out bare (``-upstream failure``), without an ``ERR`` prefix.
* ``split_inline``: redis-server's ``sdssplitargs`` rules for inline commands (``PING\\r\\n``).
* ``parse_value``: the pure-Python value of a validated reply frame, RESP2 and RESP3
  (https://github.com/redis/redis-specifications/blob/master/protocol/RESP3.md), used where
  hiredis would decode differently.

The decoders themselves (``RequestDecoder``, ``ReplyDecoder``) are in ``filters.redis_proxy.codec``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import hiredis

# sdssplitargs treats these specially; lines without them split like bytes.split().
_INLINE_SPECIAL: Final = re.compile(b"[\"'\x00\x0b\x0c]")
# Element counts owed per declared length: * ~ > one per element, % two (| is handled apart).
_AGGREGATE_FACTOR: Final = {42: 1, 126: 1, 62: 1, 37: 2}


class NeedData(enum.Enum):
    """Type of the ``NEED_DATA`` sentinel (an enum, so that ``is NEED_DATA`` narrows types)."""

    NEED_DATA = "NEED_DATA"


#: Returned by ``next()`` when the buffer holds no complete item. False and None are valid
#: RESP values, so a private sentinel is used, as in redis-py and h11.
NEED_DATA: Final = NeedData.NEED_DATA


class RespProtocolError(Exception):
    """The peer sent bytes that are not valid RESP (or exceed a cap). Close the connection."""


@dataclass(frozen=True, slots=True)
class RespError:
    """An error reply (``-ERR ...`` / ``!``), kept as bytes so it can be relayed verbatim."""

    message: bytes


ReplyValue: TypeAlias = (
    "bytes | int | float | bool | RespError | list[ReplyValue] | tuple[ReplyValue, ...]"
    " | dict[ReplyValue, ReplyValue] | None"
)


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command line like redis-server's ``sdssplitargs``.

    Blanks separate arguments; ``"..."`` takes ``\\n \\r \\t \\b \\a \\\\ \\" \\xHH`` escapes,
    ``'...'`` only ``\\'``; a closing quote must be followed by a blank or the end of the line.
    Raises ``RespProtocolError`` on unbalanced quotes.
    """
    if _INLINE_SPECIAL.search(line) is None:
        return line.split()
    line = line.split(b"\x00", 1)[0]  # C string: a NUL ends the line
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\n\r\x0b\x0c":
            i += 1
        if i == n:
            return args
        current = bytearray()
        quote = 0
        while True:
            if i == n:
                if quote:
                    raise RespProtocolError("unbalanced quotes in request")
                break
            c = line[i]
            if quote == 34:  # inside "..."
                if c == 92 and i + 3 < n and line[i + 1] == 120 and _is_hex(line[i + 2 : i + 4]):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r":
                        raise RespProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    current.append(c)
            elif quote == 39:  # inside '...'
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    current.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r":
                        raise RespProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    current.append(c)
            elif c in b" \t\n\r":
                break
            elif c == 34 or c == 39:
                quote = c
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))


_ESCAPES: Final = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


# -- reply values ------------------------------------------------------------------------------


def _is_integer(text: bytes | bytearray) -> bool:
    return (text[1:] if text[:1] == b"-" else text).isdigit()


_DOUBLE: Final = re.compile(rb"[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|inf|nan)")


class _Open:
    """An aggregate being filled by ``parse_value``."""

    __slots__ = ("items", "kind", "owed")

    def __init__(self, kind: int, owed: int) -> None:
        self.items: list[ReplyValue] = []
        self.kind = kind
        self.owed = owed


def parse_value(frame: bytes) -> ReplyValue:
    """The value of one frame that ``ReplyDecoder`` has validated, in pure Python (RESP2, RESP3)."""
    stack: list[_Open] = []  # attributes are parsed like maps, then dropped
    p = 0
    while True:
        t = frame[p]
        nl = frame.index(b"\r\n", p + 1)
        value: ReplyValue
        if t in _AGGREGATE_FACTOR or t == 124:
            count = int(frame[p + 1 : nl])
            p = nl + 2
            if count > 0:
                stack.append(_Open(t, count * _AGGREGATE_FACTOR.get(t, 2)))
                continue
            if t == 124:
                continue  # an empty attribute: the value it annotates comes next
            value = None if count < 0 else ({} if t == 37 else [])
        elif t == 36 or t == 33 or t == 61:  # $ ! =
            size = int(frame[p + 1 : nl])
            if size < 0:
                value, p = None, nl + 2
            else:
                data = frame[nl + 2 : nl + 2 + size]
                p = nl + 4 + size
                value = RespError(data) if t == 33 else (data[4:] if t == 61 else data)
        else:
            text = frame[p + 1 : nl]
            p = nl + 2
            if t == 43:
                value = text
            elif t == 45:
                value = RespError(text)
            elif t == 58 or t == 40:
                value = int(text)
            elif t == 44:
                value = float(text)
            elif t == 35:
                value = text == b"t"
            else:  # _
                value = None
        while True:  # attach the value; close every aggregate it completes
            if not stack:
                return value
            top = stack[-1]
            top.items.append(value)
            top.owed -= 1
            if top.owed:
                break
            stack.pop()
            if top.kind == 124:  # an attribute is complete: the value it annotates comes next
                break
            value = _map(top.items) if top.kind == 37 else top.items


def _map(items: list[ReplyValue]) -> ReplyValue:
    try:
        return dict(zip(items[::2], items[1::2], strict=True))
    except TypeError:  # a key that is itself an aggregate: freeze it (lists become tuples)
        return {_frozen(k): v for k, v in zip(items[::2], items[1::2], strict=True)}


def _frozen(value: ReplyValue) -> ReplyValue:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((_frozen(k), _frozen(v)) for k, v in value.items())
    return value


# -- encoders ---------------------------------------------------------------------------------

#: Frequent replies, pre-encoded.
OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"
QUEUED: Final = b"+QUEUED\r\n"
NULL_BULK: Final = b"$-1\r\n"
NULL_ARRAY: Final = b"*-1\r\n"
EMPTY_ARRAY: Final = b"*0\r\n"

_pack_command = hiredis.pack_command


def encode_command(args: Sequence[bytes]) -> bytes:
    """A command as a RESP array of bulk strings (hiredis ``pack_command``, in C)."""
    return _pack_command(tuple(args))  # type: ignore[arg-type]  # hiredis.pyi types a 1-tuple


def encode_command_parts(args: Sequence[bytes]) -> list[bytes]:
    """The same frame as ``encode_command``, as pieces for ``writelines`` (no copy of values)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return parts


def _line(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    if b"\r" in data or b"\n" in data:
        # A status line cannot hold CR/LF; redis-server replaces them with spaces too.
        data = data.replace(b"\r", b" ").replace(b"\n", b" ")
    return data


def encode_error(message: str | bytes) -> bytes:
    """An error reply ``-<message>\\r\\n``, with the message as given.

    No ``ERR`` prefix is added: Envoy sends its own errors bare (``-upstream failure``,
    ``-no upstream host``, ``-invalid request``; ``ResponseValues`` in
    ``redis_proxy/command_splitter.h``) and Redis error codes (``WRONGPASS ...``, ``NOAUTH ...``)
    are part of the message. CR and LF become spaces, so client text cannot split the frame.
    """
    return b"-" + _line(message) + b"\r\n"


def encode_simple(text: str | bytes) -> bytes:
    """A simple string reply ``+<text>\\r\\n`` (CR and LF become spaces)."""
    return b"+" + _line(text) + b"\r\n"


def encode_integer(value: int) -> bytes:
    """An integer reply ``:<value>\\r\\n``."""
    return b":%d\r\n" % value


def encode_bulk(value: bytes | None) -> bytes:
    """A bulk string reply, or the null bulk string for ``None``."""
    if value is None:
        return NULL_BULK
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode_array(frames: Sequence[bytes] | None) -> bytes:
    """An array reply from already-encoded element frames (``None``: the null array)."""
    if frames is None:
        return NULL_ARRAY
    return b"*%d\r\n" % len(frames) + b"".join(frames)


def encode_value(value: ReplyValue) -> bytes:
    """A RESP2 frame for a decoded value (bytes as bulk, RespError as error, list as array)."""
    if isinstance(value, bytes):
        return encode_bulk(value)
    if value is None:
        return NULL_BULK
    if isinstance(value, RespError):
        return b"-" + _line(value.message) + b"\r\n"
    if isinstance(value, bool):
        return b":1\r\n" if value else b":0\r\n"
    if isinstance(value, int):
        return encode_integer(value)
    if isinstance(value, float):
        return encode_bulk(repr(value).encode())
    if isinstance(value, dict):
        return encode_array([encode_value(v) for kv in value.items() for v in kv])
    return encode_array([encode_value(v) for v in value])
