"""MULTI/EXEC/DISCARD/WATCH/UNWATCH on a connection pinned to one host (user-asks F32).

A transaction cannot share the worker's pipelined connection to a host: other clients' commands
would land inside the MULTI. So a client's transaction gets a **dedicated** upstream connection
(``ClusterPool.dedicated``) to the host of its first key, used only by that client until the
transaction ends, then returned to a small idle list for the next transaction.

Rules (Envoy's, plus the single-host check Envoy lacks):

* ``MULTI`` is answered ``OK`` locally; the first keyed command picks the host, and ``MULTI`` is
  sent there just before it (its reply is swallowed). Every later command of the transaction
  must hash to that same host (all its keys, for multi-key commands, which are then sent whole,
  not split). One that does not gets ``CROSSSLOT Keys in request don't hash to the same slot``
  and, as Redis does for a command refused while queueing, dooms the transaction: ``EXEC``
  answers ``EXECABORT Transaction discarded because of previous errors.`` (and ``DISCARD`` is
  sent upstream). Any other error made up locally inside MULTI (unsupported command, wrong
  arguments) dooms it too. ``SCAN`` is refused inside a transaction.
* ``WATCH`` before ``MULTI`` pins the same way (all its keys on one host) and is sent on the
  dedicated connection. While pinned, commands for the pinned host use that connection too,
  so that a read between ``WATCH`` and ``MULTI`` is ordered after the ``WATCH``; commands for
  other hosts go the normal way.
* ``EXEC``/``DISCARD`` without ``MULTI`` -> ``EXEC without MULTI``; an empty transaction's
  ``EXEC`` -> an empty array; nested ``MULTI`` -> ``MULTI calls can not be nested``;
  ``UNWATCH`` with nothing pinned -> ``OK`` (``QUEUED`` inside MULTI), as Envoy.
* The transaction ends after ``EXEC``/``DISCARD`` (or ``UNWATCH`` outside MULTI); if the client
  goes away first, the dedicated connection is closed, not reused, since it may hold state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from filters.redis_proxy import commands as cmds
from filters.redis_proxy.commands import CommandInfo, Kind
from filters.redis_proxy.resp import EMPTY_ARRAY, OK, QUEUED, encode_command, encode_error
from filters.redis_proxy.slots import Slot
from filters.redis_proxy.splitter import NO_UPSTREAM_HOST
from filters.redis_proxy.upstream import NULL_SINK

if TYPE_CHECKING:
    from filters.redis_proxy.pool import ClusterPool
    from filters.redis_proxy.stats import CommandStats
    from filters.redis_proxy.upstream import RedisUpstream

CROSSSLOT = encode_error("CROSSSLOT Keys in request don't hash to the same slot")
EXECABORT = encode_error("EXECABORT Transaction discarded because of previous errors.")
MULTI_NESTED = encode_error(cmds.MULTI_NESTED)
WATCH_IN_MULTI = encode_error("ERR WATCH inside MULTI is not allowed")
MULTI_FRAME = encode_command([b"MULTI"])
DISCARD_FRAME = encode_command([b"DISCARD"])


def key_positions(info: CommandInfo, n_args: int) -> range:
    """Where a command's routed keys are: the routing key, every key of a multi-key command, or
    every argument of WATCH."""
    if info.key_step:
        return range(1, n_args, info.key_step)
    if info.kind is Kind.TRANSACTION:
        return range(1, n_args)
    assert info.key_index is not None
    return range(info.key_index, info.key_index + 1)


class Transaction:
    """One client's MULTI and/or WATCH state (see the module docstring)."""

    __slots__ = ("aborted", "conn", "host", "multi", "pool", "up")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.multi = False
        self.aborted = False
        self.pool: ClusterPool | None = None
        self.host: Any = None
        self.up: RedisUpstream | None = None

    def handle(self, info: CommandInfo, stats: CommandStats, args: list[bytes], now: float) -> bool:
        """Take a command while the client is in a transaction; False: send it the normal way."""
        if info.kind is Kind.TRANSACTION:
            name = info.name
            if name == "multi":
                self._multi(stats, now)
            elif name == "exec" or name == "discard":
                self._finish(info, stats, args, now)
            elif name == "watch":
                self._watch(info, stats, args, now)
            else:
                self._unwatch(stats, args, now)
            return True
        if info.kind is Kind.SCAN:
            if not self.multi:
                return False
            self.refuse(stats, encode_error(cmds.not_in_transaction(args[0])))
            return True
        target = self._target(info, args)
        if isinstance(target, bytes):  # its own keys span hosts, or no host
            if not self.multi:
                return False
            self.refuse(stats, target)
            return True
        pool, host, frame = target
        if not self.multi:
            if self.up is None or pool is not self.pool or host is not self.host:
                return False
            self._send(frame, stats, now)
            return True
        if self.up is None:
            self._pin(pool, host)
            assert self.up is not None
            self.up.send(MULTI_FRAME, NULL_SINK)
        elif pool is not self.pool or host is not self.host:
            self.refuse(stats, CROSSSLOT)
            return True
        self._send(frame, stats, now)
        return True

    def refuse(self, stats: CommandStats | None, frame: bytes) -> None:
        """An error made up locally; inside MULTI it dooms the transaction, as in Redis."""
        if self.multi:
            self.aborted = True
        self.conn.answer(frame, stats, ok=False)

    # ----- transaction commands ------------------------------------------------------------------

    def _multi(self, stats: CommandStats, now: float) -> None:
        if self.multi:
            self.conn.answer(MULTI_NESTED, stats, ok=False)
            return
        self.multi = True
        self.aborted = False
        if self.up is not None:  # pinned by WATCH: MULTI goes to that connection now
            self._send(MULTI_FRAME, stats, now)
        else:
            self.conn.answer(OK, stats, ok=True)

    def _finish(self, info: CommandInfo, stats: CommandStats, args: list[bytes], now: float) -> None:
        is_exec = info.name == "exec"
        if not self.multi:
            self.conn.answer(encode_error(cmds.without_multi(info)), stats, ok=False)
            return
        if self.aborted:
            if self.up is not None:
                self.up.send(DISCARD_FRAME, NULL_SINK)
            self.conn.answer(EXECABORT if is_exec else OK, stats, ok=not is_exec)
        elif self.up is None:
            self.conn.answer(EMPTY_ARRAY if is_exec else OK, stats, ok=True)
        else:
            self._send(encode_command(args), stats, now)
        self.end()

    def _watch(self, info: CommandInfo, stats: CommandStats, args: list[bytes], now: float) -> None:
        if self.multi:
            self.refuse(stats, WATCH_IN_MULTI)
            return
        target = self._target(info, args)
        if isinstance(target, bytes):
            self.refuse(stats, target)
            return
        pool, host, frame = target
        if self.up is None:
            self._pin(pool, host)
        elif pool is not self.pool or host is not self.host:
            self.refuse(stats, CROSSSLOT)
            return
        self._send(frame, stats, now)

    def _unwatch(self, stats: CommandStats, args: list[bytes], now: float) -> None:
        if self.up is None:
            self.conn.answer(QUEUED if self.multi else OK, stats, ok=True)
        else:
            self._send(encode_command(args), stats, now)
        if not self.multi:
            self.end()

    # ----- helpers ------------------------------------------------------------------------------

    def _target(self, info: CommandInfo, args: list[bytes]) -> tuple[ClusterPool, Any, bytes] | bytes:
        """The (pool, host, frame) every key of the command maps to, or the error to answer."""
        router = self.conn.router
        pool = host = None
        sent = args
        for pos in key_positions(info, len(args)):
            routed = router.route(args[pos])
            if routed is None:
                return NO_UPSTREAM_HOST
            key_pool, key = routed
            key_host = key_pool.host_for_key(key)
            if key_host is None:
                return NO_UPSTREAM_HOST
            if pool is None:
                pool, host = key_pool, key_host
            elif key_pool is not pool or key_host is not host:
                return CROSSSLOT
            if key is not args[pos]:
                if sent is args:
                    sent = list(args)
                sent[pos] = key
        if pool is None:
            return NO_UPSTREAM_HOST
        return pool, host, encode_command(sent)

    def _pin(self, pool: ClusterPool, host: Any) -> None:
        self.pool, self.host = pool, host
        self.up = pool.dedicated(host)

    def _send(self, frame: bytes, stats: CommandStats, now: float) -> None:
        assert self.up is not None
        slot = Slot(self.conn, stats, now)
        self.conn.slots.append(slot)
        self.up.send(frame, slot)

    def end(self) -> None:
        """The transaction is over: release the dedicated connection for reuse."""
        if self.up is not None and self.pool is not None:
            self.pool.release(self.up)
        self.up = self.pool = self.host = None
        self.multi = self.aborted = False
        self.conn.end_transaction()

    def abandon(self) -> None:
        """The client went away mid-transaction: the connection may hold MULTI/WATCH state."""
        if self.up is not None:
            self.up.close()
        self.up = self.pool = self.host = None
