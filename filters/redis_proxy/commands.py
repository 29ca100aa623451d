"""The Redis commands the proxy supports, classified once, and how a command's key is hashed.

One table, ``COMMANDS``, maps each lowercase command name (bytes, as it comes off the wire,
lowered) to a frozen ``CommandInfo``: what kind of command it is, which argument is its key,
how the replies of a multi-key command are merged, and whether it writes. The classes follow
envoy-subset.md section 5.2 and Envoy's ``SupportedCommands``
(``source/extensions/filters/network/common/redis/supported_commands.h``); the multi-key merge
rules are twemproxy's fragment/coalesce (``src/proto/nc_redis.c``) as Envoy implements them
(``command_splitter_impl.cc``):

===========  ==========================================  ============================================
kind         commands                                    routing / reply
===========  ==========================================  ============================================
SIMPLE       GET, SET, HGET, ZADD, XADD, bf.add, ...      hash argument 1, relay the reply
EVAL         EVAL, EVALSHA, EVAL_RO, EVALSHA_RO           hash argument 3 (the first key); < 4 args:
                                                          ``wrong number of arguments for 'eval' ...``
MGET         MGET                                         one ``get k`` per key; array in key order
MSET         MSET                                         one ``set k v`` per pair; ``OK`` or
                                                          ``finished with N error(s)``
SUM          DEL, EXISTS, TOUCH, UNLINK                   one command per key; integers summed
LOCAL        PING, ECHO, TIME, QUIT, AUTH                 answered by the proxy
TRANSACTION  MULTI, EXEC, DISCARD, WATCH, UNWATCH         pinned to the host of the first key
                                                          (WATCH hashes argument 1)
SCAN         SCAN (meshproxy extension, not in Envoy)     sent to every host, replies merged
===========  ==========================================  ============================================

Key hashing (``redis_key_hash``) is Envoy's ``RedisLoadBalancerContextImpl``:
``MurmurHash::murmurHash2(hashtag(key, enable_hashtagging))`` with libstdc++'s seed, which the
cluster's RING_HASH / MAGLEV then maps to a host (``filters.hashing``). With hash tagging, the
key is cut to the text between the first ``{`` and the first ``}`` after it, if that is not
empty (Redis Cluster's rule, https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags).

The Envoy reply texts the splitter sends are here too, as constants, since they are part of
the behaviour clients see (``ResponseValues`` in ``redis_proxy/command_splitter.h``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from filters.hashing.hash_functions import murmur_hash2_64


class Kind(enum.Enum):
    """How the splitter handles a command."""

    SIMPLE = "simple"
    EVAL = "eval"
    MGET = "mget"
    MSET = "mset"
    SUM = "sum"
    LOCAL = "local"
    TRANSACTION = "transaction"
    SCAN = "scan"


class Merge(enum.Enum):
    """How the replies to the fragments of a multi-key command become one reply."""

    ARRAY = "array"  # MGET: replies in key order; an error or non-bulk reply is an error element
    ALL_OK = "all_ok"  # MSET: +OK if every fragment said OK, else "finished with N error(s)"
    SUM = "sum"  # DEL & co.: integers added up; any other reply counts as an error


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """What the proxy knows about one command."""

    name: str  # lowercase, as in the ``command.<name>.`` stats
    kind: Kind
    key_index: int | None = None  # the argument hashed for routing, if any
    merge: Merge | None = None
    fragment: bytes | None = None  # the command each key is sent as (MGET -> get)
    key_step: int = 0  # arguments per key in a multi-key command (MSET: key and value)
    write: bool = False  # alters data (Envoy's writeCommands; for read_policy)


# -- the table --------------------------------------------------------------------------------


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


SIMPLE_COMMANDS: Final = _names(
    """
    append bitcount bitfield bitpos decr decrby dump expire expireat
    geoadd geodist geohash geopos georadius_ro georadiusbymember_ro
    get getbit getdel getrange getset
    hdel hexists hget hgetall hincrby hincrbyfloat hkeys hlen hmget hmset hscan hset hsetnx hstrlen hvals
    incr incrby incrbyfloat
    lindex linsert llen lmove lpop lpush lpushx lrange lrem lset ltrim
    persist pexpire pexpireat pfadd pfcount psetex pttl publish restore rpop rpush rpushx
    sadd scard set setbit setex setnx setrange sismember smembers spop srandmember srem sscan
    strlen ttl type
    xack xadd xautoclaim xclaim xdel xlen xpending xrange xrevrange xtrim
    zadd zcard zcount zincrby zlexcount zpopmin zpopmax zrange zrangebylex zrangebyscore zrank zrem
    zremrangebylex zremrangebyrank zremrangebyscore zrevrange zrevrangebylex zrevrangebyscore zrevrank
    zscan zscore
    bf.add bf.card bf.exists bf.info bf.insert bf.loadchunk bf.madd bf.mexists bf.reserve bf.scandump
    """
)
EVAL_COMMANDS: Final = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro"})
SUM_COMMANDS: Final = frozenset({"del", "exists", "touch", "unlink"})
LOCAL_COMMANDS: Final = frozenset({"ping", "echo", "time", "quit", "auth"})
TRANSACTION_COMMANDS: Final = frozenset({"multi", "exec", "discard", "watch", "unwatch"})

#: Commands that alter data (Envoy's ``writeCommands`` plus the newer writers in the table);
#: every other command is a read for ``read_policy``.
WRITE_COMMANDS: Final = _names(
    """
    append bitfield decr decrby del discard exec expire expireat eval evalsha geoadd getdel hdel
    hincrby hincrbyfloat hmset hset hsetnx incr incrby incrbyfloat linsert lmove lpop lpush lpushx
    lrem lset ltrim mset multi persist pexpire pexpireat pfadd psetex restore rpop rpush rpushx sadd
    set setbit setex setnx setrange spop srem touch unlink zadd zincrby zpopmin zpopmax zrem
    zremrangebylex zremrangebyrank zremrangebyscore
    getset xack xadd xautoclaim xclaim xdel xtrim
    bf.add bf.insert bf.loadchunk bf.madd bf.reserve
    """
)


def _build() -> dict[bytes, CommandInfo]:
    table: dict[str, CommandInfo] = {}
    for name in SIMPLE_COMMANDS:
        table[name] = CommandInfo(name, Kind.SIMPLE, key_index=1)
    for name in EVAL_COMMANDS:
        table[name] = CommandInfo(name, Kind.EVAL, key_index=3)
    for name in SUM_COMMANDS:
        table[name] = CommandInfo(name, Kind.SUM, key_index=1, merge=Merge.SUM, key_step=1)
    table["mget"] = CommandInfo("mget", Kind.MGET, 1, Merge.ARRAY, fragment=b"get", key_step=1)
    table["mset"] = CommandInfo("mset", Kind.MSET, 1, Merge.ALL_OK, fragment=b"set", key_step=2)
    for name in LOCAL_COMMANDS:
        table[name] = CommandInfo(name, Kind.LOCAL)
    for name in TRANSACTION_COMMANDS:
        table[name] = CommandInfo(name, Kind.TRANSACTION, key_index=1 if name == "watch" else None)
    table["scan"] = CommandInfo("scan", Kind.SCAN)
    return {
        name.encode(): CommandInfo(
            info.name,
            info.kind,
            info.key_index,
            info.merge,
            info.fragment,
            info.key_step,
            name in WRITE_COMMANDS,
        )
        for name, info in sorted(table.items())
    }


#: Every supported command by lowercase name.
COMMANDS: Final[Mapping[bytes, CommandInfo]] = MappingProxyType(_build())


def lookup(name: bytes) -> CommandInfo | None:
    """The ``CommandInfo`` for a command name as sent (any case), or None if unsupported."""
    return COMMANDS.get(name.lower())


# -- keys -------------------------------------------------------------------------------------


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that is hashed with hash tagging on (Envoy's ``hashtag``).

    The text between the first ``{`` and the first ``}`` after it, if non-empty; otherwise
    the whole key (``a{}{b}`` hashes whole, like Redis Cluster).
    """
    start = key.find(b"{")
    if start < 0:
        return key
    end = key.find(b"}", start + 1)
    if end <= start + 1:
        return key
    return key[start + 1 : end]


def redis_key_hash(key: bytes, enable_hashtagging: bool = False) -> int:
    """The 64-bit hash Envoy's Redis proxy gives the load balancer for ``key``."""
    return murmur_hash2_64(hash_tag(key) if enable_hashtagging else key)


def key_hasher(enable_hashtagging: bool) -> Callable[[bytes], int]:
    """``redis_key_hash`` with the setting bound, without a wrapper call when tags are off."""
    if not enable_hashtagging:
        return murmur_hash2_64
    return lambda key: murmur_hash2_64(hash_tag(key))


def routing_key(info: CommandInfo, args: Sequence[bytes]) -> bytes | None:
    """The argument that routes a single-host command (None: no key, or too few arguments)."""
    index = info.key_index
    if index is None or index >= len(args):
        return None
    return args[index]


def fragments(info: CommandInfo, args: Sequence[bytes]) -> list[list[bytes]]:
    """Split a multi-key command into one command per key, in key order.

    ``MGET a b`` -> ``[[get, a], [get, b]]``; ``MSET a 1 b 2`` -> ``[[set, a, 1], [set, b, 2]]``;
    ``DEL a b`` -> ``[[DEL, a], [DEL, b]]`` (the name as the client sent it, as Envoy does).
    Check ``arity_error`` first.
    """
    step = info.key_step
    if not step:
        raise ValueError(f"{info.name} is not a multi-key command")
    name = info.fragment or args[0]
    return [[name, *args[i : i + step]] for i in range(1, len(args), step)]


# -- reply texts (Envoy's, byte for byte) ------------------------------------------------------

OK: Final = "OK"
PONG: Final = "PONG"
INVALID_REQUEST: Final = "invalid request"
NO_UPSTREAM_HOST: Final = "no upstream host"
UPSTREAM_FAILURE: Final = "upstream failure"
UPSTREAM_PROTOCOL_ERROR: Final = "upstream protocol error"
AUTH_REQUIRED: Final = "NOAUTH Authentication required."
AUTH_INVALID_PASSWORD: Final = "ERR invalid password"
AUTH_WRONGPASS: Final = "WRONGPASS invalid username-password pair"
AUTH_NOT_SET: Final = "ERR Client sent AUTH, but no password is set"
MULTI_NESTED: Final = "MULTI calls can not be nested"


def unsupported_command(name: bytes) -> str:
    """``unsupported command '<name>'``, with the name as the client sent it."""
    return f"unsupported command '{name.decode(errors='replace')}'"


def wrong_number_of_arguments(name: bytes) -> str:
    """``wrong number of arguments for '<name>' command``, name as sent."""
    return f"wrong number of arguments for '{name.decode(errors='replace')}' command"


def not_in_transaction(name: bytes) -> str:
    """``'<name>' command is not supported within transaction``, name as sent."""
    return f"'{name.decode(errors='replace')}' command is not supported within transaction"


def without_multi(info: CommandInfo) -> str:
    """``EXEC without MULTI`` / ``DISCARD without MULTI``."""
    return f"{info.name.upper()} without MULTI"


def finished_with_errors(count: int) -> str:
    """The MSET / DEL-family reply when ``count`` fragments failed."""
    return f"finished with {count} error(s)"


def arity_error(info: CommandInfo, args: Sequence[bytes]) -> str | None:
    """Envoy's argument-count check for a supported command, as the error text to send.

    Outside LOCAL and TRANSACTION commands a request needs a key (2+ elements, else
    ``invalid request``); ECHO takes exactly one argument and AUTH one or two (else
    ``invalid request``); EVAL-likes need a key (4+); MSET needs key/value pairs.
    """
    count = len(args)
    kind = info.kind
    if kind is Kind.LOCAL:
        if info.name == "echo" and count != 2:
            return INVALID_REQUEST
        if info.name == "auth" and count < 2:
            return INVALID_REQUEST
        return None
    if kind is Kind.TRANSACTION:
        return INVALID_REQUEST if info.key_index is not None and count < 2 else None
    if count < 2:
        return INVALID_REQUEST
    if kind is Kind.EVAL and count < 4:
        return wrong_number_of_arguments(args[0])
    if kind is Kind.MSET and (count - 1) % 2:
        return wrong_number_of_arguments(args[0])
    return None
