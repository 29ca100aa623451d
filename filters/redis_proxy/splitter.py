"""The command splitter: what happens to each client command, and how replies are merged.

Every command a client sends takes one position, a *slot*, in that client's reply queue, in
request order; the filter writes the completed front of the queue (envoy-subset.md §5.2). A slot
is completed by one of:

* ``Ready`` (``slots.py``): a reply made here (PING, AUTH, ``unsupported command 'x'``...).
* ``Slot`` (``slots.py``): a command sent to one host (simple commands, EVAL by its first key, and multi-key
  commands whose keys all live on one host); the upstream's reply bytes are relayed verbatim.
* ``Fanout``: a multi-key command whose keys live on several hosts. Keys are grouped by host and
  each host gets **one** command with its keys (``MGET k1 k3``, ``DEL k2``, ``MSET k1 v1 k3 v3``;
  user-asks F38), tracked by a ``Fragment``. The merge rule comes from the command table
  (twemproxy's fragment/coalesce): MGET puts the values back in key order (a failed fragment
  gives an error element per key: its error reply, or ``upstream failure``); DEL, UNLINK,
  EXISTS and TOUCH sum the integers; MSET answers ``OK``. A failed or non-integer fragment makes
  DEL & co. and MSET answer ``finished with N error(s)`` (N counts keys, as Envoy's per-key
  fragments would).
* ``ScanPage``: one page of a SCAN across hosts. The composite cursor is
  ``host_cursor * n_hosts + host_index`` in decimal over the hosts of every routed cluster in a
  stable order (``ClusterPool.hosts``): cursor 0 starts host 0; when a host's own cursor comes
  back 0 the next cursor is the next host's index; after the last host it is 0. Each key is
  returned by the host that holds it, so a full iteration returns every key exactly once (with
  Redis's own SCAN guarantees per host).

Commands are looked up by the name as sent (``CommandTable``: one dict ``get``, with the
command's stats), so the hot path never lowercases or formats a name.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from filters.redis_proxy import commands as cmds
from filters.redis_proxy.commands import CommandInfo, Kind, Merge
from filters.redis_proxy.reply_codec import ReplyDecoder
from filters.redis_proxy.resp import (
    NULL_BULK,
    OK,
    PONG,
    RespError,
    encode_array,
    encode_bulk,
    encode_command,
    encode_error,
    encode_integer,
)
from filters.redis_proxy.slots import Slot
from filters.redis_proxy.stats import CommandStats
from filters.redis_proxy.upstream import PROTOCOL_ERROR_FRAME

if TYPE_CHECKING:
    from filters.redis_proxy.router import Router
    from filters.redis_proxy.upstream import RedisUpstream
    from stats_shm.block import StatsScope

INVALID_REQUEST = encode_error(cmds.INVALID_REQUEST)
NO_UPSTREAM_HOST = encode_error(cmds.NO_UPSTREAM_HOST)
AUTH_REQUIRED = encode_error(cmds.AUTH_REQUIRED)
AUTH_NO_PAIR_SET = encode_error("ERR Client sent AUTH, but no username-password pair is set")
INVALID_CURSOR = encode_error("ERR invalid cursor")
HELLO_NOAUTH = encode_error(
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH "
    "<user> <pass> option can be used to authenticate the client and select the RESP protocol version at "
    "the same time")
#: The Redis version HELLO reports: the command set the proxy follows.
HELLO_VERSION = b"7.0.0"

#: Commands the proxy answers beyond ``commands.COMMANDS``.
EXTRA_COMMANDS = {b"hello": CommandInfo("hello", Kind.LOCAL)}

#: Raw name spellings cached per table (``GET``, ``get``, ``Get``...): enough for any client.
_MAX_SPELLINGS = 4096

_decoder = ReplyDecoder()  # decode_frame only (MGET fragments); a worker is single-threaded


class Fragment:
    """The part of a ``Fanout`` sent to one host: which keys (by index) it carries."""

    __slots__ = ("indices", "parent")

    def __init__(self, parent: Fanout, indices: list[int]) -> None:
        self.parent = parent
        self.indices = indices

    def on_reply(self, frame: bytes, now: float) -> None:
        self.parent.merge(self.indices, frame, False)

    def on_failure(self, frame: bytes) -> None:
        self.parent.merge(self.indices, frame, True)


class Fanout(Slot):
    """A multi-key command split over several hosts; completes when every fragment has."""

    __slots__ = ("errors", "kind", "parts", "remaining", "total")

    def __init__(self, conn: Any, stats: CommandStats, start: float, kind: Merge, keys: int,
                 fragments: int) -> None:
        super().__init__(conn, stats, start)
        self.kind = kind
        self.remaining = fragments
        self.errors = 0
        self.total = 0
        self.parts: list[bytes] = [NULL_BULK] * keys if kind is Merge.ARRAY else []

    def merge(self, indices: list[int], frame: bytes, failed: bool) -> None:
        kind = self.kind
        if kind is Merge.ARRAY:
            self._merge_values(indices, frame, failed)
        elif failed:
            self.errors += len(indices)
        elif kind is Merge.SUM:
            if frame[:1] == b":":
                self.total += int(frame[1:-2])
            else:
                self.errors += len(indices)
        elif frame != OK:  # Merge.ALL_OK
            self.errors += len(indices)
        self.remaining -= 1
        if self.remaining:
            return
        errors = self.errors
        if kind is Merge.ARRAY:
            reply = b"*%d\r\n" % len(self.parts) + b"".join(self.parts)
        elif errors:
            reply = encode_error(cmds.finished_with_errors(errors))
        else:
            reply = encode_integer(self.total) if kind is Merge.SUM else OK
        if errors:
            self.on_failure(reply)
        else:
            self.on_reply(reply, self.conn.loop.time())

    def _merge_values(self, indices: list[int], frame: bytes, failed: bool) -> None:
        parts = self.parts
        if not failed and frame[:1] == b"*":
            # The usual reply, an array of bulk strings and nulls: cut it into its elements'
            # bytes (the frame was validated by the reply scanner), no decode and re-encode.
            find = frame.find
            p = find(b"\r\n") + 2
            if frame[1:p - 2] == b"%d" % len(indices):
                elements = []
                for _ in indices:
                    if frame[p] != 36:  # not '$': decoded below
                        break
                    nl = find(b"\r\n", p)
                    size = int(frame[p + 1 : nl])
                    end = nl + 2 if size < 0 else nl + 4 + size
                    elements.append(frame[p:end])
                    p = end
                else:
                    for i, element in zip(indices, elements, strict=True):
                        parts[i] = element
                    return
        value = None if failed else _decoder.decode_frame(frame)
        if failed or isinstance(value, RespError):
            for i in indices:
                parts[i] = frame  # the error reply (or upstream failure) for each of its keys
            self.errors += len(indices)
        elif isinstance(value, list) and len(value) == len(indices):
            for i, item in zip(indices, value, strict=True):
                if item.__class__ is bytes:
                    parts[i] = b"$%d\r\n%b\r\n" % (len(item), item)
                elif item is None:
                    parts[i] = NULL_BULK
                else:
                    parts[i] = PROTOCOL_ERROR_FRAME
                    self.errors += 1
        else:
            for i in indices:
                parts[i] = PROTOCOL_ERROR_FRAME
            self.errors += len(indices)


class ScanPage(Slot):
    """One SCAN call on one host; turns the host's cursor back into the composite cursor."""

    __slots__ = ("index", "n_hosts")

    def __init__(self, conn: Any, stats: CommandStats, start: float, index: int, n_hosts: int) -> None:
        super().__init__(conn, stats, start)
        self.index = index
        self.n_hosts = n_hosts

    def on_reply(self, frame: bytes, now: float) -> None:
        if frame[:1] == b"-":
            super().on_reply(frame, now)
            return
        # *2\r\n$<len>\r\n<cursor>\r\n<array of keys>: swap the cursor, keep the keys' bytes.
        try:
            if not frame.startswith(b"*2\r\n$"):
                raise ValueError(frame[:16])
            nl = frame.index(b"\r\n", 5)
            size = int(frame[5:nl])
            cursor = int(frame[nl + 2 : nl + 2 + size])
            keys = frame[nl + 4 + size :]
        except ValueError:
            self.on_failure(PROTOCOL_ERROR_FRAME)
            return
        if cursor:
            composite = cursor * self.n_hosts + self.index
        else:
            composite = self.index + 1 if self.index + 1 < self.n_hosts else 0
        super().on_reply(b"*2\r\n" + encode_bulk(b"%d" % composite) + keys, now)


Entry: TypeAlias = tuple[CommandInfo, CommandStats, bool, int, int]


class CommandTable:
    """Command name as sent -> (info, stats, single host?, fewest arguments, routing key index)."""

    def __init__(self, store: StatsScope, prefix: str, micros: bool, custom: tuple[str, ...]) -> None:
        self._store = store
        self._prefix = prefix
        self._micros = micros
        self._custom = {name.encode(): CommandInfo(name, Kind.SIMPLE, key_index=1) for name in custom}
        self._stats: dict[str, CommandStats] = {}
        self.spellings: dict[bytes, Entry] = {}

    def resolve(self, name: bytes) -> Entry | None:
        """Look a name up (any case); its stats are created on first use."""
        lowered = name.lower()
        info = cmds.lookup(name) or self._custom.get(lowered) or EXTRA_COMMANDS.get(lowered)
        if info is None:
            return None
        stats = self._stats.get(info.name)
        if stats is None:
            stats = self._stats[info.name] = CommandStats(
                self._store, f"{self._prefix}command.{info.name}.", self._micros)
        single = info.kind is Kind.SIMPLE or info.kind is Kind.EVAL
        entry = (info, stats, single, 4 if info.kind is Kind.EVAL else 2, info.key_index or 0)
        if len(self.spellings) < _MAX_SPELLINGS:
            self.spellings[name] = entry
        return entry

    def stats(self, name: str) -> CommandStats:
        entry = self.resolve(name.encode())
        assert entry is not None, name
        return entry[1]


# ----- local commands ------------------------------------------------------------------------------


def auth(config: Any, args: list[bytes], allowed: bool) -> tuple[bytes, bool]:
    """``AUTH [user] password`` against the downstream credentials: (reply, allowed after).

    A failed AUTH leaves an earlier grant in place (as Redis and current Envoy do).
    """
    passwords: tuple[bytes, ...] = config.downstream_auth_passwords
    username: bytes = config.downstream_auth_username
    if len(args) == 3:
        user, password = args[1], args[2]
        if not username and not passwords:
            return AUTH_NO_PAIR_SET, allowed
        user_ok = hmac.compare_digest(user, username) if username else user == b"default"
        if user_ok and _password_ok(passwords, password):
            return OK, True
        return encode_error(cmds.AUTH_WRONGPASS), allowed
    if not passwords:
        return encode_error(cmds.AUTH_NOT_SET), allowed
    if _password_ok(passwords, args[1]):
        return OK, True
    return encode_error(cmds.AUTH_INVALID_PASSWORD), allowed


def parse_hello(args: list[bytes]) -> tuple[int, tuple[bytes, bytes] | None] | bytes:
    """HELLO's arguments as (protocol or 0 to keep it, AUTH credentials), or the error to answer."""
    protocol = 0
    if len(args) > 1:
        if not args[1].isdigit():
            return encode_error("ERR Protocol version is not an integer or out of range")
        protocol = int(args[1])
        if protocol not in (2, 3):
            return encode_error("NOPROTO unsupported protocol version")
    credentials = None
    i = 2
    while i < len(args):
        option = args[i].lower()
        if option == b"auth" and i + 2 < len(args):
            credentials = (args[i + 1], args[i + 2])
            i += 3
        elif option == b"setname" and i + 1 < len(args):
            i += 2  # accepted; CLIENT SETNAME/GETNAME are not supported, so nobody reads it
        else:
            return encode_error(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
    return protocol, credentials


def hello_reply(protocol: int, info: Any) -> bytes:
    """HELLO's server description: a map in RESP3, a flat array in RESP2, as redis-server."""
    fields = [b"server", encode_bulk(b"redis"), b"version", encode_bulk(HELLO_VERSION), b"proto",
              encode_integer(protocol), b"id", encode_integer(getattr(info, "id", 0)), b"mode",
              encode_bulk(b"standalone"), b"role", encode_bulk(b"master"), b"modules", b"*0\r\n"]
    body = b"".join(item if i % 2 else encode_bulk(item) for i, item in enumerate(fields))
    return (b"%7\r\n" if protocol == 3 else b"*14\r\n") + body


def _password_ok(passwords: tuple[bytes, ...], given: bytes) -> bool:
    ok = False
    for password in passwords:  # constant time per candidate, and every candidate is tried
        ok |= hmac.compare_digest(password, given)
    return ok


def local_reply(info: CommandInfo, args: list[bytes]) -> bytes:
    """PING, ECHO and TIME, answered by the proxy (QUIT and AUTH are the filter's)."""
    name = info.name
    if name == "ping":
        return PONG if len(args) == 1 else encode_bulk(args[1])
    if name == "echo":
        return encode_bulk(args[1])
    now = time.time_ns() // 1000  # TIME: [unix seconds, microseconds], as redis-server
    return encode_array([encode_bulk(b"%d" % (now // 1_000_000)), encode_bulk(b"%d" % (now % 1_000_000))])


# ----- commands sent upstream ------------------------------------------------------------------------


def route_single(router: Router, args: list[bytes], key_index: int,
                 frame: bytes | None = None) -> tuple[RedisUpstream, bytes] | None:
    """The upstream of a single-host command and its encoded frame (None: no upstream host).

    Only the routing key is rewritten when its route removes the prefix (Envoy's rule, which
    for EVAL is argument 3); otherwise ``frame``, the command's own bytes, is used if given.
    """
    key = args[key_index]
    routed = router.route(key)
    if routed is None:
        return None
    pool, sent = routed
    up = pool.for_key(sent)
    if up is None:
        return None
    if sent is not key:
        args = list(args)
        args[key_index] = sent
        frame = None
    return up, frame or encode_command(args)


def send_multi(conn: Any, router: Router, info: CommandInfo, stats: CommandStats, args: list[bytes],
               now: float, frame: bytes | None = None) -> None:
    """MGET, MSET, DEL, UNLINK, EXISTS, TOUCH: one command per host, merged by ``Fanout``.

    ``frame`` is the command's own bytes, if the decoder kept them: sent as they are when one
    host holds every key and no route rewrites them.
    """
    step = info.key_step
    keys = args[1::step]
    n_keys = len(keys)
    pool = router.only
    sole = pool.sole_upstream() if pool is not None else None
    if sole is not None:  # one route to one host: every key is there
        slot = Slot(conn, stats, now)
        conn.slots.append(slot)
        sole.send(frame or encode_command(args), slot)
        return
    if pool is not None:  # one route, no prefixes: keys go as they are
        cached, for_key = pool.key_cache(), pool.for_key
        ups: list[RedisUpstream | None] = [cached(key) or for_key(key) for key in keys]
        sent_keys = keys
    else:
        ups, sent_keys = [], []
        for key in keys:
            routed = router.route(key)
            if routed is None:
                ups.append(None)
                sent_keys.append(key)
            else:
                ups.append(routed[0].for_key(routed[1]))
                sent_keys.append(routed[1])
    first = ups[0]
    if first is not None and ups.count(first) == n_keys:  # one host holds every key: send it whole
        slot = Slot(conn, stats, now)
        conn.slots.append(slot)
        if sent_keys is keys or sent_keys == keys:
            first.send(frame or encode_command(args), slot)
        else:
            first.send(encode_command(_with_keys(args, step, range(n_keys), sent_keys)), slot)
        return
    groups: dict[RedisUpstream | None, list[int]] = {}
    get = groups.get
    for i, up in enumerate(ups):
        group = get(up)
        if group is None:
            groups[up] = [i]
        else:
            group.append(i)
    unrouted = groups.pop(None, None)
    assert info.merge is not None
    fanout = Fanout(conn, stats, now, info.merge, n_keys, len(groups) + (1 if unrouted else 0))
    conn.slots.append(fanout)
    for up, indices in groups.items():
        assert up is not None
        up.send(encode_command(_with_keys(args, step, indices, sent_keys)), Fragment(fanout, indices))
    if unrouted:
        fanout.merge(unrouted, NO_UPSTREAM_HOST, True)


def _with_keys(args: list[bytes], step: int, indices: Any, keys: list[bytes]) -> list[bytes]:
    """``args[0]`` followed by the keys at ``indices`` (with their values when ``step`` is 2)."""
    if step == 1:
        return [args[0], *[keys[i] for i in indices]]
    out = [args[0]]
    append = out.append
    for i in indices:
        append(keys[i])
        append(args[2 + 2 * i])
    return out


def send_scan(conn: Any, router: Router, stats: CommandStats, args: list[bytes], now: float) -> None:
    """One page of SCAN (see the module docstring for the composite cursor)."""
    cursor = parse_cursor(args[1])
    slots = conn.slots
    hosts = [(pool, host) for pool in router.pools() for host in pool.hosts()]
    if cursor is None or not hosts:
        slot = Slot(conn, stats, now)
        slots.append(slot)
        slot.on_failure(INVALID_CURSOR if cursor is None else NO_UPSTREAM_HOST)
        return
    n_hosts = len(hosts)
    index = cursor % n_hosts
    pool, host = hosts[index]
    page = ScanPage(conn, stats, now, index, n_hosts)
    slots.append(page)
    pool.upstream(host).send(encode_command([args[0], b"%d" % (cursor // n_hosts), *args[2:]]), page)


def parse_cursor(text: bytes) -> int | None:
    """A SCAN cursor as redis-server reads it: an unsigned decimal."""
    return int(text) if text.isdigit() else None
