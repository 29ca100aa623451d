"""redis_proxy's per-connection filter: decode commands, route them, answer in request order.

Per downstream read (``on_data``): the ``RequestDecoder`` hands over every complete command of
the read at once (``take``); each command takes a slot at the back of the connection's reply
queue (``slots``) and is either answered here or queued on the upstream of the host its key
hashes to (``upstream``), to be written with everything else queued in this event-loop pass.
Replies fill slots in any order; ``flush`` (run once per pass for a connection that has new
replies, or at once for a client whose only command was answered) writes the filled front of
the queue with one ``write``, so replies leave in request order (envoy-subset.md §5.2).

The hot path is a simple command (GET, SET, HGET, EVAL...) from an authenticated client outside
a transaction, routed by the only route, inline in ``_run``: one dict lookup for the command
(with its stats), one lookup in the pool's key -> upstream cache, one ``Slot``, and the
command's own bytes forwarded as they came (the frames ``take`` returns; hiredis's
``pack_command`` costs about a microsecond). Consecutive commands for one host are handed to
its upstream together and a run of one command counts its ``total`` once.
Everything else goes through ``_dispatch``: AUTH and NOAUTH, local commands, Envoy's errors,
multi-key commands, SCAN, transactions (``transaction``), prefix routes.

Flow control: at most ``MAX_PENDING`` commands per client are in flight; past that the
connection stops reading (``read_disable``) and leaves further commands in the decoder until
the queue is back under half. A client that does not read its replies stops being read once
its write buffer passes the listener's buffer limit. A protocol error counts
``downstream_cx_protocol_error`` and closes the connection, as Envoy does. QUIT answers ``OK``
and closes once the replies before it are written; a client that half-closes gets its pending
replies, then the connection closes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hiredis

from filters.api import ConnectionEvent, FilterStatus, NetworkFilter, WorkerContext
from filters.redis_proxy import commands as cmds
from filters.redis_proxy.codec import RequestDecoder
from filters.redis_proxy.commands import Kind
from filters.redis_proxy.config import RedisProxyConfig, protocol_options_of
from filters.redis_proxy.pool import ClusterPool, worker_state
from filters.redis_proxy.redirect import TrackedSlot
from filters.redis_proxy.resp import OK, RespProtocolError, encode_error
from filters.redis_proxy.router import Router
from filters.redis_proxy.slots import Ready, Slot
from filters.redis_proxy.splitter import (
    AUTH_REQUIRED,
    HELLO_NOAUTH,
    INVALID_REQUEST,
    NO_UPSTREAM_HOST,
    CommandTable,
    auth,
    hello_reply,
    local_reply,
    parse_hello,
    route_single,
    send_multi,
    send_scan,
)
from filters.redis_proxy.stats import RedisClusterStats, RedisProxyStats, SplitterStats
from filters.redis_proxy.transaction import Transaction

if TYPE_CHECKING:
    import asyncio

    from filters.redis_proxy.stats import CommandStats
    from filters.redis_proxy.upstream import RedisUpstream

log = logging.getLogger("meshproxy.redis")

_STOP = FilterStatus.STOP_ITERATION
_pack = hiredis.pack_command

#: Commands in flight per client before its connection stops reading (resumes under half).
MAX_PENDING = 1024


class Shared:
    """What every connection of one redis_proxy config in one worker uses."""

    def __init__(self, config: RedisProxyConfig, worker: WorkerContext) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop = worker.loop
        prefix = f"redis.{config.stat_prefix}."
        self.stats = RedisProxyStats(worker.stats, prefix)
        self.splitter_stats = SplitterStats(worker.stats, prefix + "splitter.")
        self.table = CommandTable(worker.stats, prefix, config.latency_in_micros, config.custom_commands)
        self.worker = worker
        self.state = worker_state(worker)
        self.flusher = self.state.flusher
        settings = config.settings
        self.redirect = settings.enable_redirection
        self.command_stats = settings.enable_command_stats
        self.auth_needed = bool(config.downstream_auth_passwords or config.downstream_auth_username)
        self._routes: dict[int, tuple[Router, ClusterPool | None]] = {}
        for name in config.cluster_names():
            cluster = worker.clusters.get(name)
            policy = cluster.config.lb_policy.name
            if len(cluster.hosts) > 1 and policy not in ("RING_HASH", "MAGLEV"):
                log.warning("redis_proxy: cluster '%s' has lb_policy %s; keys need RING_HASH or MAGLEV "
                            "to land on the same host from every worker", name, policy)
        self.router, self.fast_pool = self.routes(2)

    def routes(self, protocol: int) -> tuple[Router, ClusterPool | None]:
        """The router of RESP2 or RESP3 clients, and the pool of the fast path (None: no fast path).

        Pools are shared by every redis_proxy config of the worker with equal settings.
        """
        routes = self._routes.get(protocol)
        if routes is not None:
            return routes
        worker, settings, state = self.worker, self.config.settings, self.state
        hashtag = settings.enable_hashtagging
        pools: dict[str, ClusterPool] = {}
        for name in self.config.cluster_names():
            pool = state.pools.get((name, settings, protocol))
            if pool is None:
                cluster = worker.clusters.get(name)
                pool = state.pools[(name, settings, protocol)] = ClusterPool(
                    worker, cluster, settings, protocol_options_of(cluster.config), self.flusher,
                    RedisClusterStats(worker.stats, cluster.stats.prefix),
                    cmds.key_hasher(hashtag), protocol)
            pools[name] = pool
        router = Router(self.config, pools)
        # The fast path needs one route, and no per-command work beyond relaying the reply.
        fast = router.only if not (self.redirect or self.command_stats) else None
        routes = self._routes[protocol] = (router, fast)
        return routes


class RedisProxyFilter(NetworkFilter):
    """The terminal filter of a Redis listener (see the module docstring)."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.rx_bytes_total = shared.stats.downstream_cx_rx_bytes_total  # once per read
        self.router = shared.router
        self.fast_pool = shared.fast_pool
        self.protocol = 2
        self.flusher = shared.flusher
        self.loop = shared.loop
        self.decoder = RequestDecoder(keep_frames=True)
        self.slots: deque[Any] = deque()
        self.dirty = False
        self.closed = False
        self.allowed = not shared.auth_needed
        self.tx: Transaction | None = None
        self.plain = self.allowed  # authenticated and outside a transaction: the fast path applies
        self.paused = False  # reading stopped by MAX_PENDING
        self.quitting = False
        self.eof = False
        self.rx_buffered = 0
        self.tx_buffered = 0

    # ----- downstream events -----------------------------------------------------------------------

    def on_new_connection(self) -> FilterStatus:
        stats = self.shared.stats
        stats.downstream_cx_total.inc()
        stats.downstream_cx_active.inc()
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        if data:
            self.rx_bytes_total.inc(len(data))
            self.decoder.feed(data)
        if end_stream:
            self.eof = True
        self._process()
        if self.rx_buffered or data[-2:] != b"\r\n":  # else the decoder is (almost surely) empty:
            self._update_rx_buffered()  # a read ending in CRLF mid-command is caught on the next one
        if self.eof and not self.slots and not self.closed:
            self.callbacks.close(flush=True)
        return _STOP

    def on_event(self, event: ConnectionEvent) -> None:
        if self.closed:
            return
        self.closed = True
        stats = self.shared.stats
        stats.downstream_cx_active.dec()
        stats.downstream_rq_active.dec(len(self.slots))
        stats.downstream_cx_rx_bytes_buffered.dec(self.rx_buffered)
        stats.downstream_cx_tx_bytes_buffered.dec(self.tx_buffered)
        self.rx_buffered = self.tx_buffered = 0
        self.slots.clear()  # replies still due from upstreams land in slots nobody holds
        if self.tx is not None:
            self.tx.abandon()
            self.tx = None

    def on_above_write_buffer_high_watermark(self) -> None:
        self.callbacks.read_disable(True)

    def on_below_write_buffer_low_watermark(self) -> None:
        self.callbacks.read_disable(False)

    # ----- commands --------------------------------------------------------------------------------

    def _process(self) -> None:
        """Handle every complete command in the decoder (until MAX_PENDING are in flight)."""
        if self.closed or self.quitting:
            return
        decoder = self.decoder
        room = MAX_PENDING - len(self.slots)  # every command takes exactly one slot
        try:
            commands, frames = decoder.take(room)
        except RespProtocolError as exc:
            self._protocol_error(exc)
            return
        count = len(commands)
        if count:
            done = self._run(commands, frames)
            stats = self.shared.stats
            stats.downstream_rq_total.inc(done)
            stats.downstream_rq_active.inc(done)
            if self.closed or self.quitting:
                return
            if count >= room:
                if not self.paused:
                    self.paused = True
                    self.callbacks.read_disable(True)
                return
        if decoder.error is not None:
            self._protocol_error(decoder.error)

    def _run(self, commands: deque[list[bytes]], frames: deque[bytes | None]) -> int:
        """The commands of one read, in order: the fast path inline, the rest by ``_dispatch``.

        Returns how many were handled: all of them, unless one was QUIT.
        """
        shared = self.shared
        add_slot = self.slots.append
        spellings = shared.table.spellings.get
        now = self.loop.time()
        fast_pool = self.fast_pool if self.plain else None
        if fast_pool is not None:
            cached, for_key = fast_pool.key_cache(), fast_pool.for_key
        # Consecutive fast-path commands for one upstream are handed over together.
        batch_up: RedisUpstream | None = None
        out: list[bytes] = []
        sinks: list[Slot] = []
        # Runs of one command (a pipeline of GETs) count their ``total`` once.
        run_stats: CommandStats | None = None
        run = 0
        todo = zip(commands, frames, strict=True)
        for args, frame in todo:
            entry = spellings(args[0]) if args else None
            if fast_pool is not None and entry is not None and entry[2] and len(args) >= entry[3]:
                command_stats = entry[1]
                if command_stats is run_stats:
                    run += 1
                else:
                    if run_stats is not None:
                        run_stats.total.inc(run)
                    run_stats, run = command_stats, 1
                slot = Slot(self, command_stats, now)
                add_slot(slot)
                key = args[entry[4]]
                up = cached(key)
                if up is None:
                    up = for_key(key)
                    if up is None:
                        slot.on_failure(NO_UPSTREAM_HOST)
                        continue
                if up is not batch_up:
                    if batch_up is not None:
                        batch_up.send_many(out, sinks)
                        out, sinks = [], []
                    batch_up = up
                # Forward the bytes as they came; encode only what the decoder could not keep.
                out.append(frame or _pack(tuple(args)))  # type: ignore[arg-type]  # hiredis.pyi: 1-tuple
                sinks.append(slot)
            else:
                if batch_up is not None:  # keep the wire order the client's order
                    batch_up.send_many(out, sinks)
                    batch_up, out, sinks = None, [], []
                self._dispatch(args, entry, now, frame)
                if self.quitting or self.closed:
                    if run_stats is not None:
                        run_stats.total.inc(run)
                    return len(commands) - sum(1 for _ in todo)  # what follows QUIT is dropped
                if (self.fast_pool if self.plain else None) is not fast_pool:  # AUTH, HELLO, MULTI...
                    fast_pool = self.fast_pool if self.plain else None
                    if fast_pool is not None:
                        cached, for_key = fast_pool.key_cache(), fast_pool.for_key
        if batch_up is not None:
            batch_up.send_many(out, sinks)
        if run_stats is not None:
            run_stats.total.inc(run)
        return len(commands)

    def _update_rx_buffered(self) -> None:
        buffered = self.decoder.buffered
        if buffered != self.rx_buffered:
            self.shared.stats.downstream_cx_rx_bytes_buffered.inc(buffered - self.rx_buffered)
            self.rx_buffered = buffered

    def _dispatch(self, args: list[bytes], entry: Any, now: float, frame: bytes | None = None) -> None:
        """Every command but the plain simple one (see the module docstring)."""
        shared = self.shared
        if not args:
            self._invalid()
            return
        if entry is None:
            entry = shared.table.resolve(args[0])
        if entry is None:
            if not self.allowed:
                self.answer(AUTH_REQUIRED)
                return
            shared.splitter_stats.unsupported_command.inc()
            self._refuse(None, encode_error(cmds.unsupported_command(args[0])))
            return
        info, stats, single, _min, key_index = entry
        kind = info.kind
        if kind is Kind.LOCAL:
            self._local(info, args)
            return
        if not self.allowed:
            self.answer(AUTH_REQUIRED)
            return
        error = cmds.arity_error(info, args)
        if error is not None:
            if error == cmds.INVALID_REQUEST:
                self._invalid()
            else:
                stats.total.inc()
                self._refuse(stats, encode_error(error))
            return
        stats.total.inc()
        if self.tx is not None or kind is Kind.TRANSACTION:
            tx = self.tx
            if tx is None:
                tx = self.tx = Transaction(self)
                self.plain = False
            handled = tx.handle(info, stats, args, now)
            if self.tx is not None and not tx.multi and tx.up is None:
                self.end_transaction()
            if handled:
                return
        if single:
            self._single(info.name, key_index, stats, args, now, frame)
        elif kind is Kind.SCAN:
            send_scan(self, self.router, stats, args, now)
        else:
            send_multi(self, self.router, info, stats, args, now, frame)

    def _single(self, name: str, key_index: int, stats: CommandStats, args: list[bytes], now: float,
                frame: bytes | None) -> None:
        shared = self.shared
        routed = route_single(self.router, args, key_index, frame)
        if shared.redirect or shared.command_stats:
            up, frame = routed if routed is not None else (None, b"")
            slot: Slot = TrackedSlot(self, stats, now, frame, up, name)
        else:
            slot = Slot(self, stats, now)
        self.slots.append(slot)
        if routed is None:
            slot.on_failure(NO_UPSTREAM_HOST)
        else:
            routed[0].send(routed[1], slot)

    def _local(self, info: Any, args: list[bytes]) -> None:
        name = info.name
        if name == "auth":
            if len(args) < 2:
                self._invalid()
                return
            reply, self.allowed = auth(self.shared.config, args, self.allowed)
            self.plain = self.allowed and self.tx is None
            self.answer(reply)
        elif name == "hello":
            self._hello(args)
        elif not self.allowed:
            self.answer(AUTH_REQUIRED)
        elif name == "echo" and len(args) != 2:
            self._invalid()
        elif name == "quit":
            self.answer(OK)
            self.quitting = True
        else:
            self.answer(local_reply(info, args))

    def _hello(self, args: list[bytes]) -> None:
        """``HELLO [protover [AUTH user pass] [SETNAME name]]``: switch RESP2/RESP3 (redis-py 8
        opens every connection with ``HELLO 3``)."""
        parsed = parse_hello(args)
        if isinstance(parsed, bytes):
            self.answer(parsed)
            return
        protocol, credentials = parsed
        if credentials is not None:
            reply, self.allowed = auth(self.shared.config, [b"AUTH", *credentials], self.allowed)
            self.plain = self.allowed and self.tx is None
            if reply != OK:
                self.answer(reply)
                return
        if not self.allowed:
            self.answer(HELLO_NOAUTH)
            return
        if protocol and protocol != self.protocol:
            if self.tx is not None:
                self.answer(encode_error(cmds.not_in_transaction(args[0])))
                return
            self.protocol = protocol
            self.router, self.fast_pool = self.shared.routes(protocol)
        self.answer(hello_reply(self.protocol, self.callbacks.info))

    def _invalid(self) -> None:
        self.shared.splitter_stats.invalid_request.inc()
        self._refuse(None, INVALID_REQUEST)

    def _refuse(self, stats: CommandStats | None, frame: bytes) -> None:
        if self.tx is not None:
            self.tx.refuse(stats, frame)
        else:
            self.answer(frame, stats, ok=False)

    def answer(self, frame: bytes, stats: CommandStats | None = None, ok: bool = True) -> None:
        """Queue a reply made here (counted as the command's success or error when given stats)."""
        if stats is not None:
            (stats.success if ok else stats.error).inc()
            stats.latency.record(0.0)
        self.slots.append(Ready(frame))
        if not self.dirty:
            self.dirty = True
            self.flusher.add(self)

    def end_transaction(self) -> None:
        self.tx = None
        self.plain = self.allowed

    def _protocol_error(self, exc: RespProtocolError) -> None:
        self.quitting = True  # nothing more is read from this client
        self.shared.stats.downstream_cx_protocol_error.inc()
        log.debug("redis downstream %s: protocol error: %s", self.callbacks.info.remote_address, exc)
        self.flush()
        self.callbacks.close(flush=True)

    # ----- replies ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the filled front of the reply queue at once; resume reading when drained."""
        self.dirty = False
        if self.closed:
            return
        slots = self.slots
        popleft = slots.popleft
        out = []
        while slots:
            reply = slots[0].reply
            if reply is None:
                break
            popleft()
            out.append(reply)
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            stats = self.shared.stats
            stats.downstream_cx_tx_bytes_total.inc(len(data))
            stats.downstream_rq_active.dec(len(out))
            callbacks = self.callbacks
            callbacks.write(data)
            buffered = callbacks.write_buffer_size()
            if buffered != self.tx_buffered:
                stats.downstream_cx_tx_bytes_buffered.inc(buffered - self.tx_buffered)
                self.tx_buffered = buffered
        if self.paused and len(slots) <= MAX_PENDING // 2:
            self.paused = False
            self.callbacks.read_disable(False)
            self._process()
            self._update_rx_buffered()
        if not slots and (self.quitting or self.eof) and not self.closed:
            self.callbacks.close(flush=True)


def build(config: RedisProxyConfig, worker: WorkerContext) -> Callable[[], NetworkFilter]:
    """Bind stats, pools and routes once per worker; return the per-connection factory."""
    shared = Shared(config, worker)

    def make() -> NetworkFilter:
        return RedisProxyFilter(shared)

    return make
