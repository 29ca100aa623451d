"""The Redis command table, key extraction with hash tags, and Envoy's reply texts."""

from __future__ import annotations

import pytest

from filters.hashing import murmur_hash2_64
from filters.redis_proxy.commands import (
    COMMANDS,
    CommandInfo,
    Kind,
    Merge,
    arity_error,
    finished_with_errors,
    fragments,
    hash_tag,
    lookup,
    not_in_transaction,
    redis_key_hash,
    routing_key,
    unsupported_command,
    without_multi,
)


def info(name: bytes) -> CommandInfo:
    found = lookup(name)
    assert found is not None, name
    return found


def test_every_section_5_2_command_is_classified() -> None:
    simple = str.split(
        "append bitcount bitfield bitpos decr decrby dump expire expireat geoadd geodist geohash geopos "
        "georadius_ro georadiusbymember_ro get getbit getdel getrange getset hdel hexists hget hgetall "
        "hincrby hincrbyfloat hkeys hlen hmget hmset hscan hset hsetnx hstrlen hvals incr incrby "
        "incrbyfloat lindex linsert llen lmove lpop lpush lpushx lrange lrem lset ltrim persist pexpire "
        "pexpireat pfadd pfcount psetex pttl publish restore rpop rpush rpushx sadd scard set setbit setex "
        "setnx setrange sismember smembers spop srandmember srem sscan strlen ttl type xack xadd "
        "xautoclaim xclaim xdel xlen xpending xrange xrevrange xtrim zadd zcard zcount zincrby zlexcount "
        "zpopmin zpopmax zrange zrangebylex zrangebyscore zrank zrem zremrangebylex zremrangebyrank "
        "zremrangebyscore zrevrange zrevrangebylex zrevrangebyscore zrevrank zscan zscore bf.add bf.exists"
    )
    for text in simple:
        assert (info(text.encode()).kind, info(text.encode()).key_index) == (Kind.SIMPLE, 1), text
    for name in (b"eval", b"evalsha", b"eval_ro", b"evalsha_ro"):
        assert (info(name).kind, info(name).key_index) == (Kind.EVAL, 3)
    for name in (b"del", b"exists", b"touch", b"unlink"):
        assert (info(name).kind, info(name).merge) == (Kind.SUM, Merge.SUM)
    assert (info(b"mget").kind, info(b"mget").merge) == (Kind.MGET, Merge.ARRAY)
    assert (info(b"mset").kind, info(b"mset").merge) == (Kind.MSET, Merge.ALL_OK)
    for name in (b"ping", b"echo", b"time", b"quit", b"auth"):
        assert info(name).kind is Kind.LOCAL
    for name in (b"multi", b"exec", b"discard", b"watch", b"unwatch"):
        assert info(name).kind is Kind.TRANSACTION
    assert info(b"watch").key_index == 1
    assert info(b"scan").kind is Kind.SCAN
    assert all(key == key.lower() and key.decode() == value.name for key, value in COMMANDS.items())


def test_lookup_is_case_insensitive_and_rejects_unknown() -> None:
    assert lookup(b"GeT") is lookup(b"get")
    assert lookup(b"keys") is None
    assert lookup(b"flushall") is None
    assert lookup(b"") is None


def test_write_commands() -> None:
    assert info(b"set").write
    assert info(b"del").write
    assert info(b"mset").write
    assert not info(b"get").write
    assert not info(b"mget").write
    assert not info(b"ping").write


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        (b"{user1000}.following", b"user1000"),  # Redis Cluster spec examples
        (b"foo{}{bar}", b"foo{}{bar}"),
        (b"foo{{bar}}zap", b"{bar"),
        (b"foo{bar}{zap}", b"bar"),
        (b"{}", b"{}"),
        (b"no-braces", b"no-braces"),
        (b"open{only", b"open{only"),
        (b"close}{first", b"close}{first"),
        (b"}{a}", b"a"),
        (b"", b""),
    ],
)
def test_hash_tag(key: bytes, tag: bytes) -> None:
    assert hash_tag(key) == tag


def test_redis_key_hash_is_envoys_murmur2_of_the_tag() -> None:
    assert redis_key_hash(b"foo") == 9631199822919835226  # hash_test.cc murmurHash2("foo")
    assert redis_key_hash(b"{foo}:1", enable_hashtagging=True) == 9631199822919835226
    assert redis_key_hash(b"{foo}:1") == murmur_hash2_64(b"{foo}:1")


def test_routing_key() -> None:
    assert routing_key(info(b"get"), [b"GET", b"k"]) == b"k"
    assert routing_key(info(b"eval"), [b"EVAL", b"return 1", b"1", b"k1", b"a"]) == b"k1"
    assert routing_key(info(b"eval"), [b"EVAL", b"s", b"0"]) is None
    assert routing_key(info(b"ping"), [b"PING"]) is None


def test_fragments() -> None:
    assert fragments(info(b"mget"), [b"MGET", b"a", b"b"]) == [[b"get", b"a"], [b"get", b"b"]]
    assert fragments(info(b"mset"), [b"MSET", b"a", b"1", b"b", b"2"]) == [
        [b"set", b"a", b"1"],
        [b"set", b"b", b"2"],
    ]
    assert fragments(info(b"del"), [b"Del", b"a", b"b"]) == [[b"Del", b"a"], [b"Del", b"b"]]
    with pytest.raises(ValueError, match="not a multi-key command"):
        fragments(info(b"get"), [b"GET", b"a"])


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([b"GET"], "invalid request"),
        ([b"GET", b"k"], None),
        ([b"EVAL", b"s", b"0"], "wrong number of arguments for 'EVAL' command"),
        ([b"evalsha", b"sha", b"1", b"k"], None),
        ([b"MSET", b"a"], "wrong number of arguments for 'MSET' command"),
        ([b"mset", b"a", b"1"], None),
        ([b"MGET"], "invalid request"),
        ([b"PING"], None),
        ([b"ECHO"], "invalid request"),
        ([b"ECHO", b"a", b"b"], "invalid request"),
        ([b"AUTH"], "invalid request"),
        ([b"AUTH", b"user", b"pass"], None),
        ([b"MULTI"], None),
        ([b"WATCH"], "invalid request"),
        ([b"UNWATCH"], None),
    ],
)
def test_arity_error(args: list[bytes], error: str | None) -> None:
    assert arity_error(info(args[0]), args) == error


def test_reply_texts() -> None:
    assert unsupported_command(b"FLUSHALL") == "unsupported command 'FLUSHALL'"
    assert not_in_transaction(b"MGET") == "'MGET' command is not supported within transaction"
    assert without_multi(info(b"exec")) == "EXEC without MULTI"
    assert finished_with_errors(2) == "finished with 2 error(s)"
