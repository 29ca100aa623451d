"""Properties of the RESP codec: only items or RespProtocolError, split-independence, round-trips,
and the raw reply scanner agreeing with hiredis."""

from __future__ import annotations

from collections.abc import Callable

import hiredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters.redis_proxy.codec import RequestDecoder
from filters.redis_proxy.reply_codec import ReplyDecoder
from filters.redis_proxy.resp import NEED_DATA, RespError, RespProtocolError, encode_command

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- input generators ------------------------------------------------------------------------------

args_lists = st.lists(st.binary(max_size=40), max_size=6)
commands = st.lists(args_lists, max_size=8)

# Byte soup made of RESP-looking pieces, so that the decoders get past the first byte.
pieces = st.sampled_from(
    [b"*", b"$", b"+", b"-", b":", b"%", b"~", b">", b"|", b"_", b",", b"#", b"(", b"!", b"=",
     b"\r\n", b"\n", b"\r", b"0", b"1", b"2", b"3", b"-1", b"10", b"a", b"PING", b" ", b'"', b"'",
     b"\\x4", b"\x00", b"t", b"inf", b".5"]
)  # fmt: skip
resp_soup = st.lists(st.one_of(pieces, st.binary(max_size=4)), max_size=30).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=100), resp_soup)


def split_points(data: bytes) -> st.SearchStrategy[list[bytes]]:
    if len(data) < 2:
        return st.just([data])
    cuts = st.lists(st.integers(1, len(data) - 1), max_size=8, unique=True).map(sorted)
    return cuts.map(lambda c: [data[a:b] for a, b in zip([0, *c], [*c, len(data)], strict=True)])


Outcome = tuple[list[object], str | None]


def run(make: Callable[[], RequestDecoder | ReplyDecoder], chunks: list[bytes], raw: bool = False) -> Outcome:
    """Feed chunks; return the items and the protocol error (if any). Any other exception fails."""
    decoder = make()
    take = decoder.next_raw if raw and isinstance(decoder, ReplyDecoder) else decoder.next
    items: list[object] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (item := take()) is not NEED_DATA:
                items.append(item)
    except RespProtocolError:
        return items, "error"
    return items, None


# -- properties ------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), payload=any_bytes)
def test_requests_only_commands_or_protocol_error_and_split_independent(
    data: st.DataObject, payload: bytes
) -> None:
    whole = run(RequestDecoder, [payload])
    for item in whole[0]:
        assert isinstance(item, list)
        assert all(type(arg) is bytes for arg in item)
    chunks = data.draw(split_points(payload))
    assert run(RequestDecoder, chunks) == whole
    assert run(RequestDecoder, [payload[i : i + 1] for i in range(len(payload))]) == whole


@SETTINGS
@given(data=st.data(), payload=any_bytes)
def test_replies_only_values_or_protocol_error_and_split_independent(
    data: st.DataObject, payload: bytes
) -> None:
    whole_raw = run(ReplyDecoder, [payload], raw=True)
    assert b"".join(whole_raw[0]) == payload[: sum(map(len, whole_raw[0]))]  # type: ignore[arg-type]
    chunks = data.draw(split_points(payload))
    assert run(ReplyDecoder, chunks, raw=True) == whole_raw
    # Values: the same frames, decoded; never an exception other than RespProtocolError.
    whole_values = run(ReplyDecoder, [payload])
    assert len(whole_values[0]) == len(whole_raw[0])
    assert whole_values[1] == whole_raw[1]
    assert run(ReplyDecoder, chunks) == whole_values


@SETTINGS
@given(data=st.data(), batch=commands)
def test_encode_then_decode_round_trips(data: st.DataObject, batch: list[list[bytes]]) -> None:
    stream = b"".join(encode_command(args) for args in batch)
    chunks = data.draw(split_points(stream))
    assert run(RequestDecoder, chunks) == (batch, None)


# Valid replies, built as (frame, expected hiredis value) pairs.
line_text = st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)


def _simple(t: bytes) -> tuple[bytes, object]:
    return b"+" + t + b"\r\n", t


def _error(t: bytes) -> tuple[bytes, object]:
    return b"-" + t + b"\r\n", RespError(t)


def _bulk(b: bytes) -> tuple[bytes, object]:
    return b"$%d\r\n%b\r\n" % (len(b), b), b


def _integer(i: int) -> tuple[bytes, object]:
    return b":%d\r\n" % i, i


def _array(items: list[tuple[bytes, object]]) -> tuple[bytes, object]:
    return b"*%d\r\n" % len(items) + b"".join(f for f, _ in items), [v for _, v in items]


resp2_scalars = st.one_of(
    line_text.map(_simple),
    line_text.map(_error),
    st.binary(max_size=30).map(_bulk),
    st.integers(-(2**63), 2**63 - 1).map(_integer),
    st.just((b"$-1\r\n", None)),
    st.just((b"*-1\r\n", None)),
)
bulk_arrays = st.lists(st.binary(max_size=30), max_size=8).map(lambda xs: _array([_bulk(x) for x in xs]))
resp2_replies = st.recursive(
    resp2_scalars, lambda inner: st.lists(inner, max_size=5).map(_array), max_leaves=25
)

resp3_scalars = st.one_of(
    resp2_scalars,
    st.just(b"_\r\n"),
    st.sampled_from(
        [b"#t\r\n", b"#f\r\n", b",1.5\r\n", b",-inf\r\n", b",nan\r\n", b"(-123456789012345678901\r\n"]
    ),
    st.binary(max_size=10).map(lambda b: b"!%d\r\n%b\r\n" % (len(b), b)),
    st.binary(max_size=10).map(lambda b: b"=%d\r\ntxt:%b\r\n" % (len(b) + 4, b)),
).map(lambda x: x[0] if isinstance(x, tuple) else x)


def _aggregate(kind: bytes, items: list[bytes]) -> bytes:
    if kind == b"%":
        items = items[: len(items) // 2 * 2]
        return b"%%%d\r\n" % (len(items) // 2) + b"".join(items)
    if kind == b"|":  # an attribute of one pair annotating the remaining value
        return b"|1\r\n+k\r\n:1\r\n" + (items[0] if items else b"_\r\n")
    return kind + b"%d\r\n" % len(items) + b"".join(items)


resp3_replies = st.recursive(
    resp3_scalars,
    lambda inner: st.tuples(st.sampled_from([b"*", b"~", b">", b"%", b"|"]), st.lists(inner, max_size=4)).map(
        lambda kv: _aggregate(*kv)
    ),
    max_leaves=20,
)


def _hiredis_shape(value: object) -> object:
    # hiredis gives error replies as ReplyError(str); compare them as RespError(bytes).
    if isinstance(value, hiredis.ReplyError):
        return RespError(str(value.args[0]).encode())
    if isinstance(value, list):
        return [_hiredis_shape(v) for v in value]
    return value


@SETTINGS
@given(data=st.data(), replies=st.lists(st.one_of(resp2_replies, bulk_arrays), min_size=1, max_size=6))
def test_raw_frames_and_values_agree_with_hiredis(
    data: st.DataObject, replies: list[tuple[bytes, object]]
) -> None:
    frames = [frame for frame, _ in replies]
    stream = b"".join(frames)
    chunks = data.draw(split_points(stream))
    assert run(ReplyDecoder, chunks, raw=True) == (frames, None)
    values = run(ReplyDecoder, chunks)[0]
    assert values == [value for _, value in replies]
    reader = hiredis.Reader(replyError=hiredis.ReplyError)
    reader.feed(stream)
    expected = []
    while (value := reader.gets()) is not False:
        expected.append(_hiredis_shape(value))
    # hiredis decodes error text as UTF-8 with replacement; compare where that is lossless.
    if all(b"\xef\xbf\xbd" not in f and _utf8(f) for f in frames):
        assert values == expected


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@SETTINGS
@given(data=st.data(), frames=st.lists(resp3_replies, min_size=1, max_size=6))
def test_resp3_raw_frames_round_trip(data: st.DataObject, frames: list[bytes]) -> None:
    stream = b"".join(frames)
    chunks = data.draw(split_points(stream))
    items, error = run(ReplyDecoder, chunks, raw=True)
    assert error is None
    assert items == frames
    assert len(run(ReplyDecoder, chunks)[0]) == len(frames)


# -- the batch forms the proxy uses: take() and take_raw() ------------------------------------------


def run_batches(
    make: Callable[[], RequestDecoder | ReplyDecoder], chunks: list[bytes], limit: int = 3
) -> Outcome:
    """Like ``run`` through ``take`` (at most ``limit`` commands a call) or ``take_raw``."""
    decoder = make()
    items: list[object] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while True:
                if isinstance(decoder, RequestDecoder):
                    commands, frames = decoder.take(limit)
                    assert len(commands) == len(frames) <= limit
                    batch: list[object] = list(commands)
                else:
                    batch = list(decoder.take_raw())
                if not batch:
                    break
                items += batch
    except RespProtocolError:
        assert decoder.error is not None
        return items, "error"
    assert decoder.error is None
    return items, None


@SETTINGS
@given(data=st.data(), payload=any_bytes)
def test_batch_takes_yield_what_next_yields(data: st.DataObject, payload: bytes) -> None:
    """``take``/``take_raw`` return the same items and the same error as ``next``/``next_raw``,
    however the input is split (commands before an error first, then the error)."""
    chunks = data.draw(split_points(payload))
    assert run_batches(lambda: RequestDecoder(keep_frames=True), chunks) == run(RequestDecoder, chunks)
    assert run_batches(ReplyDecoder, chunks) == run(ReplyDecoder, chunks, raw=True)


@SETTINGS
@given(data=st.data(), batch=commands)
def test_take_frames_are_the_commands_own_bytes(data: st.DataObject, batch: list[list[bytes]]) -> None:
    """A frame ``take`` hands back is exactly the bytes of its command, forwarded as they came."""
    stream = b"".join(encode_command(args) for args in batch)
    decoder = RequestDecoder(keep_frames=True)
    got: list[list[bytes]] = []
    for chunk in data.draw(split_points(stream)):
        decoder.feed(chunk)
        commands, frames = decoder.take(1000)
        for args, frame in zip(commands, frames, strict=True):
            assert frame is None or frame == encode_command(args)
            got.append(args)
    assert got == batch
