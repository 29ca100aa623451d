"""RESP decoders and encoders: byte fixtures fed whole, one byte at a time and with trailing bytes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

import hiredis
import pytest

from filters.redis_proxy import reply_codec
from filters.redis_proxy.codec import RequestDecoder
from filters.redis_proxy.reply_codec import ReplyDecoder
from filters.redis_proxy.resp import (
    NEED_DATA,
    ReplyValue,
    RespError,
    RespProtocolError,
    encode_array,
    encode_bulk,
    encode_command,
    encode_command_parts,
    encode_error,
    encode_integer,
    encode_simple,
    encode_value,
    split_inline,
)

Decoder = RequestDecoder | ReplyDecoder


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_splits(data: bytes, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 7))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


FEEDS = [whole, bytewise, random_splits]


def drain(
    decoder: Decoder, chunks: Iterable[bytes], step: Callable[[], object] | None = None
) -> list[object]:
    take = step or decoder.next
    out: list[object] = []
    for chunk in chunks:
        decoder.feed(chunk)
        while (item := take()) is not NEED_DATA:
            out.append(item)
    return out


# -- requests -------------------------------------------------------------------------------------

REQUESTS: list[tuple[bytes, list[list[bytes]]]] = [
    (b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n", [[b"GET", b"key"]]),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n\r\n\x00\xff\r\n", [[b"SET", b"k", b"\r\n\x00\xff"]]),
    (b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", [[b"ECHO", b""]]),
    (b"*0\r\n", [[]]),
    (b"PING\r\n", [[b"PING"]]),
    (b"PING\n", [[b"PING"]]),
    (b"  \r\n\r\nget  a\tb \r\n", [[b"get", b"a", b"b"]]),  # blank lines are skipped
    (b'SET "a b" \'it\\\'s\' "\\x41\\n\\"q"\r\n', [[b"SET", b"a b", b"it's", b'A\n"q']]),
    (
        b"*1\r\n$4\r\nPING\r\nECHO x\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",  # inline between arrays
        [[b"PING"], [b"ECHO", b"x"], [b"GET", b"k"]],
    ),
]


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize(("data", "expected"), REQUESTS)
def test_requests(data: bytes, expected: list[list[bytes]], feed: Callable[[bytes], list[bytes]]) -> None:
    decoder = RequestDecoder()
    assert drain(decoder, feed(data)) == expected
    assert decoder.buffered == 0


@pytest.mark.parametrize("feed", FEEDS)
def test_request_pipeline_with_trailing_bytes(feed: Callable[[bytes], list[bytes]]) -> None:
    commands = [[b"SET", b"key:%d" % i, b"v" * (i % 50)] for i in range(300)]
    partial = b"*2\r\n$3\r\nGET\r\n$5\r\nke"
    decoder = RequestDecoder()
    assert drain(decoder, feed(b"".join(map(encode_command, commands)) + partial)) == commands
    assert decoder.next() is NEED_DATA
    assert decoder.buffered == len(partial)
    decoder.feed(b"y:1\r\n")
    assert decoder.next() == [b"GET", b"key:1"]
    assert decoder.next() is NEED_DATA


def test_request_16_mib_bulk_in_64_kib_reads() -> None:
    value = bytes(range(256)) * (64 * 1024)  # 16 MiB
    frame = encode_command([b"SET", b"big", value])
    decoder = RequestDecoder()
    results = drain(decoder, [frame[i : i + 65536] for i in range(0, len(frame), 65536)])
    assert results == [[b"SET", b"big", value]]


def test_request_many_elements_over_many_reads() -> None:
    args = [b"MSET"] + [b"k%d" % i for i in range(20000)]
    frame = encode_command(args)
    assert drain(RequestDecoder(), [frame[i : i + 1000] for i in range(0, len(frame), 1000)]) == [args]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"$3\r\nfoo\r\n", "expected '\\*'"),  # a non-array
        (b":1\r\n", "expected '\\*'"),
        (b"-ERR x\r\n", "expected '\\*'"),
        (b"*1\r\n+foo\r\n", "expected '\\$'"),  # hiredis alone would accept this
        (b"*1\r\n:1\r\n", "expected '\\$'"),
        (b"*1\r\n*1\r\n$1\r\na\r\n", "expected '\\$'"),  # nested
        (b"*1\r\n\x00", "expected '\\$'"),  # a bad type byte is an error before its line ends
        (b"*1\r\n$-1\r\n", "invalid bulk length"),  # null bulk
        (b"*-1\r\n", "invalid multibulk length"),
        (b"*-2\r\n", "invalid multibulk length"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*01\r\n$1\r\na\r\n", "invalid multibulk length"),
        (b"*1\r\n$03\r\nfoo\r\n", "invalid bulk length"),
        (b"*1\r\n$+3\r\nfoo\r\n", "invalid bulk length"),
        (b"*1\r\n$3\r\nfooXX", "not terminated by CRLF"),  # hiredis alone would accept this
        (b"*1\r\n$3\r\nfoo\r\n*1\r\n$3\r\nbarXX", "not terminated by CRLF"),
        (b"*1\r\n$" + b"9" * 30, "invalid length header"),
        (b'SET "a\r\n', "unbalanced quotes"),
        (b'SET "a"b\r\n', "unbalanced quotes"),
        (b"*%d\r\n" % (1024 * 1024 + 1), "exceeds"),
        (b"*1\r\n$%d\r\n" % (512 * 1024 * 1024 + 1), "exceeds"),
    ],
)
@pytest.mark.parametrize("feed", FEEDS)
def test_request_protocol_errors(data: bytes, message: str, feed: Callable[[bytes], list[bytes]]) -> None:
    decoder = RequestDecoder()
    with pytest.raises(RespProtocolError, match=message):
        drain(decoder, feed(data))
    with pytest.raises(RespProtocolError, match=message):  # the decoder stays broken
        decoder.next()


def test_request_commands_before_an_error_are_returned_first() -> None:
    decoder = RequestDecoder()
    decoder.feed(b"*1\r\n$4\r\nPING\r\n*1\r\n+PING\r\n")
    assert decoder.next() == [b"PING"]
    with pytest.raises(RespProtocolError):
        decoder.next()


def test_request_caps_apply_to_complete_commands_too() -> None:
    decoder = RequestDecoder(max_bulk_len=5)
    decoder.feed(b"*1\r\n$6\r\nfoobar\r\n")
    with pytest.raises(RespProtocolError, match="bulk length 6 exceeds 5"):
        decoder.next()
    decoder = RequestDecoder(max_array_len=1)
    decoder.feed(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n")
    with pytest.raises(RespProtocolError, match="multibulk length 2 exceeds 1"):
        decoder.next()


def test_request_caps_on_incomplete_input() -> None:
    decoder = RequestDecoder(max_bulk_len=100)
    decoder.feed(b"*2\r\n$3\r\nGET\r\n$101\r\n")  # refused before the payload arrives
    with pytest.raises(RespProtocolError, match="bulk length 101 exceeds 100"):
        decoder.next()
    decoder = RequestDecoder(max_array_len=2)
    decoder.feed(b"*3\r\n")
    with pytest.raises(RespProtocolError, match="multibulk length 3 exceeds 2"):
        decoder.next()
    decoder = RequestDecoder(max_request_size=1000)
    decoder.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$990\r\n")
    with pytest.raises(RespProtocolError, match="request larger than 1000 bytes"):
        decoder.next()
    decoder = RequestDecoder(max_inline_len=10)
    decoder.feed(b"PING 12345678")
    with pytest.raises(RespProtocolError, match="too big inline request"):
        decoder.next()
    decoder = RequestDecoder(max_inline_len=10)
    decoder.feed(b"PING 1234\n")  # exactly the limit is fine
    assert decoder.next() == [b"PING", b"1234"]


def test_request_waits_without_rescanning_for_a_declared_bulk() -> None:
    decoder = RequestDecoder()
    decoder.feed(b"*1\r\n$1000\r\n")
    assert decoder.next() is NEED_DATA
    for _ in range(9):
        decoder.feed(b"x" * 100)
        assert decoder.next() is NEED_DATA
    assert decoder.buffered == 1000 + len(b"*1\r\n$1000\r\n") - 100
    decoder.feed(b"x" * 100 + b"\r\n")
    assert decoder.next() == [b"x" * 1000]


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"", []),
        (b"  a  b  ", [b"a", b"b"]),
        (b'"" x', [b"", b"x"]),
        (b'"\\t\\r\\n\\b\\a\\\\\\x7a\\q"', [b"\t\r\n\b\a\\zq"]),
        (b'"\\xzz"', [b"xzz"]),  # not a hex escape: \x is just x
        (b"'a\"b' \"c'd\"", [b'a"b', b"c'd"]),
        (b"a\x00b c", [b"a"]),  # a C string ends at NUL
        (b"a\x0bb", [b"a\x0bb"]),  # VT separates only between arguments, like sdssplitargs
    ],
)
def test_split_inline(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


# -- replies ---------------------------------------------------------------------------------------

REPLIES: list[tuple[bytes, ReplyValue]] = [
    (b"+OK\r\n", b"OK"),
    (b"-ERR wrong type \xff\r\n", RespError(b"ERR wrong type \xff")),
    (b"-MOVED 3999 127.0.0.1:6381\r\n", RespError(b"MOVED 3999 127.0.0.1:6381")),
    (b":-42\r\n", -42),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n$1\r\na\r\n$-1\r\n:7\r\n", [b"a", None, 7]),
    (b"*2\r\n*1\r\n+x\r\n*0\r\n", [[b"x"], []]),
    (b"*2\r\n-ERR a\r\n+QUEUED\r\n", [RespError(b"ERR a"), b"QUEUED"]),  # EXEC-style
    # RESP3
    (b"_\r\n", None),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (b",3.25\r\n", 3.25),
    (b",-inf\r\n", float("-inf")),
    (b"(12345678901234567890\r\n", 12345678901234567890),
    (b"!9\r\nSYNTAX xy\r\n", RespError(b"SYNTAX xy")),
    (b"=8\r\ntxt:abcd\r\n", b"abcd"),
    (b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n", {b"a": 1, b"b": [2]}),
    (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
    (b">3\r\n+message\r\n+chan\r\n$2\r\nhi\r\n", [b"message", b"chan", b"hi"]),
    (b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n", b"v"),  # attributes are skipped
    (b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n|0\r\n:2\r\n", [1, 2]),
]


@pytest.mark.parametrize("feed", FEEDS)
def test_replies_raw_and_values(feed: Callable[[bytes], list[bytes]]) -> None:
    frames = [frame for frame, _ in REPLIES]
    stream = b"".join(frames)
    decoder = ReplyDecoder()
    assert drain(decoder, feed(stream), decoder.next_raw) == frames
    decoder = ReplyDecoder()
    values = drain(decoder, feed(stream))
    assert values == [value for _, value in REPLIES]
    assert decoder.buffered == 0


def test_reply_values_agree_with_hiredis_on_resp2() -> None:
    frame = b"*4\r\n$3\r\nfoo\r\n*2\r\n:1\r\n$-1\r\n+OK\r\n*0\r\n"
    reader = hiredis.Reader()
    reader.feed(frame)
    decoder = ReplyDecoder()
    decoder.feed(frame)
    assert decoder.next() == reader.gets() == [b"foo", [1, None], b"OK", []]


def test_deeply_nested_reply() -> None:
    frame = b"*1\r\n" * 200 + b":5\r\n"
    decoder = ReplyDecoder()
    decoder.feed(frame)
    value = decoder.next()
    for _ in range(200):
        assert isinstance(value, list)
        assert len(value) == 1
        value = value[0]
    assert value == 5


def test_reply_16_mib_bulk_and_big_aggregate_in_small_reads() -> None:
    big = encode_bulk(b"z" * (16 * 1024 * 1024))
    aggregate = encode_array([encode_bulk(b"key:%d" % i) for i in range(50000)])
    stream = b"+OK\r\n" + big + aggregate + b":1\r\n"
    decoder = ReplyDecoder()
    frames = drain(decoder, [stream[i : i + 65536] for i in range(0, len(stream), 65536)], decoder.next_raw)
    assert frames == [b"+OK\r\n", big, aggregate, b":1\r\n"]
    decoder = ReplyDecoder()
    frames = drain(
        decoder, [aggregate[i : i + 1000] for i in range(0, len(aggregate), 1000)], decoder.next_raw
    )
    assert frames == [aggregate]


def test_reply_trailing_partial_frame() -> None:
    decoder = ReplyDecoder()
    decoder.feed(b"+OK\r\n*2\r\n$1\r\na\r\n$3\r\nbc")
    assert decoder.next_raw() == b"+OK\r\n"
    assert decoder.next_raw() is NEED_DATA
    assert decoder.buffered == len(b"*2\r\n$1\r\na\r\n$3\r\nbc")
    decoder.feed(b"d\r\n")
    assert decoder.next_raw() == b"*2\r\n$1\r\na\r\n$3\r\nbcd\r\n"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"?\r\n", "invalid reply type byte"),
        (b"$x\r\n", "invalid bulk length"),
        (b"$-2\r\n", "invalid bulk length"),
        (b"!-1\r\n", "invalid bulk length"),  # only $ has a RESP2 null
        (b"$03\r\nabc\r\n", "invalid bulk length"),
        (b"$3\r\nabcXY", "not terminated by CRLF"),
        (b":1.5\r\n", "invalid integer"),
        (b":\r\n", "invalid integer"),
        (b"*x\r\n", "invalid aggregate length"),
        (b"%-1\r\n", "invalid aggregate length"),
        (b"#x\r\n", "invalid '#' value"),
        (b"_x\r\n", "invalid '_' value"),
        (b",abc\r\n", "invalid ',' value"),
        (b"(1x\r\n", "invalid '\\(' value"),
        (b"*2\r\n+a\r\n?\r\n", "invalid reply type byte"),
    ],
)
@pytest.mark.parametrize("feed", FEEDS)
def test_reply_protocol_errors(data: bytes, message: str, feed: Callable[[bytes], list[bytes]]) -> None:
    decoder = ReplyDecoder()
    with pytest.raises(RespProtocolError, match=message):
        drain(decoder, feed(data))
    with pytest.raises(RespProtocolError, match=message):
        decoder.next_raw()


def test_reply_caps() -> None:
    decoder = ReplyDecoder(max_line=16)
    decoder.feed(b"+" + b"a" * 20)
    with pytest.raises(RespProtocolError, match="longer than 16"):
        decoder.next()
    decoder = ReplyDecoder(max_line=16)
    decoder.feed(b"+" + b"a" * 20 + b"\r\n")  # complete, yet the cap applies all the same
    with pytest.raises(RespProtocolError, match="longer than 16"):
        decoder.next()
    decoder = ReplyDecoder(max_bulk_len=10)
    decoder.feed(b"*1\r\n$11\r\n01234567890\r\n")
    with pytest.raises(RespProtocolError, match="exceeds 10"):
        decoder.next()
    decoder = ReplyDecoder(max_bulk_len=10)
    decoder.feed(b"$11\r\n")
    with pytest.raises(RespProtocolError, match="exceeds 10"):
        decoder.next()
    decoder = ReplyDecoder(max_elements=10)
    decoder.feed(b"*11\r\n")
    with pytest.raises(RespProtocolError, match="exceeds 10"):
        decoder.next()


def test_replies_before_an_error_are_returned_first() -> None:
    decoder = ReplyDecoder()
    decoder.feed(b"+OK\r\n:1\r\n?\r\n")
    assert decoder.next() == b"OK"
    assert decoder.next() == 1
    with pytest.raises(RespProtocolError):
        decoder.next()


# -- encoders --------------------------------------------------------------------------------------


def test_encode_command() -> None:
    args = [b"SET", b"k", b"\r\nv"]
    expected = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\r\nv\r\n"
    assert encode_command(args) == expected
    assert b"".join(encode_command_parts(args)) == expected
    assert encode_command([]) == b"*0\r\n"


def test_encode_replies() -> None:
    # Envoy's proxy errors go out bare, with no ERR prefix (command_splitter.h ResponseValues).
    assert encode_error("upstream failure") == b"-upstream failure\r\n"
    assert encode_error(b"ERR unknown command 'x\xff'") == b"-ERR unknown command 'x\xff'\r\n"
    assert encode_error("bad\r\nline") == b"-bad  line\r\n"  # a client's text cannot split a frame
    assert encode_simple("OK") == b"+OK\r\n"
    assert encode_simple(b"a\nb") == b"+a b\r\n"
    assert encode_integer(-3) == b":-3\r\n"
    assert encode_bulk(b"") == b"$0\r\n\r\n"
    assert encode_bulk(None) == b"$-1\r\n"
    assert encode_array(None) == b"*-1\r\n"
    assert encode_array([b":1\r\n", b"$-1\r\n"]) == b"*2\r\n:1\r\n$-1\r\n"


def test_encode_value_round_trips_resp2() -> None:
    value: ReplyValue = [b"a", None, 5, RespError(b"ERR x"), [b"", [-1]], []]
    decoder = ReplyDecoder()
    decoder.feed(encode_value(value))
    assert decoder.next() == value
    assert encode_value(True) == b":1\r\n"
    assert encode_value(1.5) == b"$3\r\n1.5\r\n"
    assert encode_value({b"k": 1}) == b"*2\r\n$1\r\nk\r\n:1\r\n"


# -- benchmark (opt-in) -----------------------------------------------------------------------------


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _reads(data: bytes) -> list[bytes]:
    return [data[i : i + 65536] for i in range(0, len(data), 65536)]


def _pure_python_requests(chunks: list[bytes]) -> None:
    # The least a pure-Python parser must do per element (no caps, no partial input).
    buf = b"".join(chunks)
    pos, end = 0, len(buf)
    while pos < end:
        nl = buf.find(b"\r\n", pos)
        count, pos = int(buf[pos + 1 : nl]), nl + 2
        args = []
        for _ in range(count):
            nl = buf.find(b"\r\n", pos)
            text = buf[pos + 1 : nl]
            if not text.isdigit():
                raise ValueError(text)
            start = nl + 2
            stop = start + int(text)
            if buf[stop : stop + 2] != b"\r\n":
                raise ValueError(stop)
            args.append(buf[start:stop])
            pos = stop + 2


@pytest.mark.slow
def test_benchmark(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Numbers for the codec module docstring (relative: the dev box is shared and noisy)."""
    n = 10000

    def relay(chunks: list[bytes], scanner_only: bool = False) -> Callable[[], object]:
        def run() -> None:
            with monkeypatch.context() as patch:
                if scanner_only:
                    patch.setattr(reply_codec, "_FAST_TYPES", frozenset())
                decoder = ReplyDecoder()
                drain(decoder, chunks, decoder.next_raw)

        return run

    def reencode(chunks: list[bytes]) -> Callable[[], object]:
        def run() -> None:
            reader = hiredis.Reader()
            for chunk in chunks:
                reader.feed(chunk)
                while (value := reader.gets()) is not False:
                    encode_value(value)

        return run

    def bare_hiredis(chunks: list[bytes]) -> Callable[[], object]:
        def run() -> None:
            reader = hiredis.Reader()
            for chunk in chunks:
                reader.feed(chunk)
                while reader.gets() is not False:
                    pass

        return run

    replies = {
        "mixed +OK / :n / $16": _reads(
            b"".join([b"+OK\r\n", b":12345\r\n", b"$16\r\n0123456789abcdef\r\n"][i % 3] for i in range(n))
        ),
        "*10 arrays of $16": _reads(
            b"".join(b"*10\r\n" + b"$16\r\n0123456789abcdef\r\n" * 10 for _ in range(n))
        ),
        "one 16 MiB bulk": _reads(encode_bulk(b"x" * (16 << 20))),
    }
    sets = _reads(b"*3\r\n$3\r\nSET\r\n$6\r\nkey:42\r\n$16\r\n0123456789abcdef\r\n" * n)
    cases: dict[str, tuple[Callable[[], object], int]] = {}
    for name, chunks in replies.items():
        count = 0 if "16 MiB" in name else n
        cases[f"{name}: next_raw"] = (relay(chunks), count)
        cases[f"{name}: scanner only"] = (relay(chunks, scanner_only=True), count)
        cases[f"{name}: hiredis + re-encode"] = (reencode(chunks), count)
    cases["SET requests: RequestDecoder"] = (lambda: drain(RequestDecoder(), sets), n)
    cases["SET requests: pure Python"] = (lambda: _pure_python_requests(sets), n)
    cases["SET requests: bare hiredis"] = (bare_hiredis(sets), n)
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(7):  # interleaved, so that load from other processes hits every case alike
        for name, (fn, _count) in cases.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    with capsys.disabled():
        for name, (_fn, count) in cases.items():
            per = f"{best[name] / count * 1e6:.2f} us/item" if count else f"{best[name] * 1e3:.1f} ms"
            print(f"\n{name:45s} {per}", end="")
        print()
