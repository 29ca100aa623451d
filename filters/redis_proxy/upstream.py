"""Upstream side of redis_proxy: one pipelined connection per worker per host.

**Shape.** A ``RedisUpstream`` is one connection to one host, shared by every downstream client
of its worker (the pools are in ``pool.py``). It owns a FIFO of *sinks*: the objects waiting for
a reply (a downstream reply slot, a fragment of a multi-key command, a SCAN page). Redis answers
a connection's commands in order, so each complete reply frame (``ReplyDecoder.take_raw``: all
of a read's frames at once) completes the sink at the head of the FIFO with the reply's exact
bytes. Plain reply slots are completed inline, with their stats counted once per run of one
client's commands (``slots``).

**Batching.** ``send`` only appends the encoded command to a list and marks the upstream dirty
with the worker's ``Flusher``, which runs once per event-loop pass (``call_soon``) and writes
each dirty upstream's commands with one ``transport.write``: all commands of every client read
in that pass go out in one write per host. With ``max_buffer_size_before_flush`` the flush
waits instead until that many bytes are queued or ``buffer_flush_timeout`` passes (Envoy's
batching across clients). Replies flow back the same way: sinks fill their downstream slots,
and each touched downstream writes its completed in-order replies once per pass; a client
whose only command was answered (``-P 1``) is written at the end of the upstream read instead,
as it has nothing else to wait for.

**Timeouts and failures.**
* ``op_timeout``: as Envoy, armed when the first command of a pipeline is written, re-armed on
  each reply. The timer is not re-armed per reply: replies stamp ``last_progress`` (once per
  read) and the timer, when it fires early, re-arms itself for the remainder. On expiry the
  connection is closed, every pending sink gets ``upstream failure``, ``upstream_rq_timeout``++
  and the host's ``rq_timeout``++. Until the connection is up, the cluster's
  ``connect_timeout`` applies (``workers.upstream.ConnectAttempt``).
* A lost connection fails exactly the sinks it held (``upstream failure``) at once. The next
  command reconnects; a failed connect backs off 0.1 s doubling to 2 s, and while backing off
  commands fail fast with ``upstream failure`` rather than queue behind a dead host.
* A reply that is not RESP closes the connection (``upstream_cx_protocol_error``++) and fails
  its sinks with ``upstream protocol error``.
* The handshake is written first on every new connection, pipelined with the queued commands,
  and its reply is consumed here: ``AUTH [user] password`` from the cluster's
  ``RedisProtocolOptions``, or for the pools of RESP3 clients ``HELLO 3`` (with ``AUTH user
  password`` when configured). A refused handshake is logged once and fails the connection's
  sinks with ``upstream failure``.

Each physical connection gets its own ``_Link`` as the owner of its ``UpstreamConnection``, so
late events of a connection that was already given up (a close after a timeout) can never
touch its successor.

**Protocols.** Replies are relayed verbatim, so a client that switched to RESP3 (``HELLO 3``)
must be served by upstream connections in RESP3 too: pools are per (cluster, settings,
protocol), and the RESP3 pools exist only once a RESP3 client has come.

**Dedicated connections** (``dedicated=True``) carry one client's transaction (MULTI/EXEC,
WATCH): the same FIFO, but never reconnected (a transaction cannot survive a new
connection) and returned to a small idle list per host once the transaction ends.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from filters.redis_proxy.commands import UPSTREAM_FAILURE, UPSTREAM_PROTOCOL_ERROR
from filters.redis_proxy.reply_codec import ReplyDecoder
from filters.redis_proxy.resp import RespProtocolError, encode_error
from filters.redis_proxy.slots import Slot, count_replies

if TYPE_CHECKING:
    import asyncio

    from filters.redis_proxy.pool import ClusterPool

log = logging.getLogger("meshproxy.redis")

FAILURE_FRAME = encode_error(UPSTREAM_FAILURE)
PROTOCOL_ERROR_FRAME = encode_error(UPSTREAM_PROTOCOL_ERROR)
BACKOFF_BASE = 0.1
BACKOFF_MAX = 2.0


class Sink(Protocol):
    """What waits for one reply: completed exactly once, by a frame or by a failure."""

    def on_reply(self, frame: bytes, now: float) -> None: ...
    def on_failure(self, frame: bytes) -> None: ...


class NullSink:
    """Swallows a reply the client must not see (MULTI sent ahead of a transaction, ASKING)."""

    __slots__ = ()

    def on_reply(self, frame: bytes, now: float) -> None:
        pass

    def on_failure(self, frame: bytes) -> None:
        pass


NULL_SINK = NullSink()


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    """Runs ``flush()`` of every object added during this event-loop pass, once, at its end."""

    __slots__ = ("loop", "queue", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: list[Flushable] = []
        self.scheduled = False

    def add(self, obj: Flushable) -> None:
        self.queue.append(obj)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        queue, self.queue = self.queue, []
        for obj in queue:
            try:
                obj.flush()
            except Exception:  # a bug: keep flushing the others, and say so
                log.exception("redis_proxy: flush of %r failed", obj)


class _Link:
    """The owner of one physical connection; forwards its events while it is current."""

    __slots__ = ("up",)

    def __init__(self, up: RedisUpstream) -> None:
        self.up: RedisUpstream | None = up

    def on_upstream_data(self, data: bytes) -> None:
        if self.up is not None:
            self.up.on_data(data)

    def on_upstream_eof(self) -> None:
        if self.up is not None:
            self.up.lost(self, "closed by upstream")

    def on_upstream_closed(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.lost(self, f"connection lost ({exc})" if exc else "closed by upstream")

    def on_upstream_above_high_watermark(self) -> None:
        pass  # bounded by the per-client caps of pending commands (filter.MAX_PENDING)

    def on_upstream_below_low_watermark(self) -> None:
        pass


class RedisUpstream:
    """One connection to one host with a FIFO of sinks (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_flush_timer",
        "backoff",
        "conn",
        "connecting",
        "dead",
        "decoder",
        "dedicated",
        "dirty",
        "handshake_pending",
        "host",
        "inflight",
        "last_progress",
        "link",
        "out",
        "out_bytes",
        "pending",
        "pool",
        "releasing",
        "retry_at",
        "sent",
        "timer",
    )

    def __init__(self, pool: ClusterPool, host: Any, dedicated: bool = False) -> None:
        self.pool = pool
        self.host = host
        self.dedicated = dedicated
        self.conn: Any = None  # workers.upstream.UpstreamConnection once connected
        self.link: _Link | None = None
        self.connecting: Any = None  # the ConnectHandle of an attempt in progress
        self.decoder = ReplyDecoder()
        self.pending: deque[Sink] = deque()  # sinks of commands queued or written, in order
        self.out: list[bytes] = []  # encoded commands not written yet
        self.out_bytes = 0
        self.inflight = 0  # commands written and not answered
        self.sent: deque[list[Any]] = deque()  # [commands, time] per write, for upstream_rq_time
        self.dirty = False
        self.handshake_pending = False
        self.timer: asyncio.TimerHandle | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self.last_progress = 0.0
        self.backoff = 0.0
        self.retry_at = 0.0
        self.dead = False  # a dedicated connection that was lost, or a removed host
        self.releasing = False  # a dedicated connection to release once its replies are in

    # ----- sending -----------------------------------------------------------------------------

    def send(self, frame: bytes, sink: Sink) -> None:
        """Queue one encoded command; ``sink`` gets its reply (or a failure, maybe at once)."""
        if self.conn is None and self.connecting is None and not self._connect():
            sink.on_failure(FAILURE_FRAME)
            return
        pending = self.pending
        if not pending:
            self.last_progress = self.pool.loop.time()  # a new pipeline starts now
        pending.append(sink)
        self.out.append(frame)
        if self.pool.batch_size:
            self._batch(len(frame))
        elif not self.dirty:
            self.dirty = True
            self.pool.flusher.add(self)

    def send_many(self, frames: list[bytes], sinks: Sequence[Sink]) -> None:
        """``send`` for several commands at once (the filter's fast path)."""
        if self.conn is None and self.connecting is None and not self._connect():
            for sink in sinks:
                sink.on_failure(FAILURE_FRAME)
            return
        pending = self.pending
        if not pending:
            self.last_progress = self.pool.loop.time()
        pending.extend(sinks)
        self.out += frames
        if self.pool.batch_size:
            self._batch(sum(map(len, frames)))
        elif not self.dirty:
            self.dirty = True
            self.pool.flusher.add(self)

    def _batch(self, size: int) -> None:
        """``max_buffer_size_before_flush``: write when enough is queued or the timer fires."""
        self.out_bytes += size
        pool = self.pool
        if self.out_bytes >= pool.batch_size:
            if not self.dirty:
                self.dirty = True
                pool.flusher.add(self)
        elif self._flush_timer is None:
            self._flush_timer = pool.loop.call_later(pool.settings.buffer_flush_timeout, self._on_flush_timer)

    def _on_flush_timer(self) -> None:
        self._flush_timer = None
        self.flush()

    def flush(self) -> None:
        """Write every queued command at once (a no-op until connected)."""
        self.dirty = False
        out = self.out
        conn = self.conn
        if not out or conn is None:
            return
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self.out = []
        self.out_bytes = 0
        n = len(out)
        data = out[0] if n == 1 else b"".join(out)
        self.inflight += n
        pool = self.pool
        self.sent.append([n, pool.loop.time()])
        stats = pool.cluster_stats
        stats.upstream_rq_total.inc(n)
        stats.upstream_rq_active.inc(n)
        stats.upstream_cx_tx_bytes_total.inc(len(data))
        host_stats = self.host.stats
        host_stats.rq_total.inc(n)
        host_stats.rq_active.inc(n)
        conn.write(data)
        if self.timer is None:
            self.timer = pool.loop.call_later(pool.settings.op_timeout, self._on_timer)

    # ----- replies ------------------------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        pool = self.pool
        pool.cluster_stats.upstream_cx_rx_bytes_total.inc(len(data))
        decoder = self.decoder
        decoder.feed(data)
        now = pool.loop.time()
        self.last_progress = now
        link = self.link
        done = 0
        alone: list[Any] = []  # clients whose only command was answered: written below
        try:
            frames = decoder.take_raw()  # every complete reply of this read, in one call
            if self.handshake_pending and frames:
                self._handshake_reply(frames.popleft())
                if self.link is not link:
                    return
            if frames:
                inflight = self.inflight
                popleft = self.pending.popleft
                # Plain slots are completed here (Slot.on_reply inlined), their stats counted
                # once per run of one client's command read together (slots.count_replies).
                run_stats: Any = None
                run_start = 0.0
                run = 0
                try:
                    for frame in frames:
                        if done == inflight:  # a reply to nothing we sent
                            raise RespProtocolError("unexpected reply")
                        done += 1
                        sink = popleft()
                        if sink.__class__ is Slot:
                            sink.reply = frame
                            if sink.stats is run_stats and sink.start == run_start:
                                run += 1
                            else:
                                if run == 1:  # Slot.on_reply's counting, without a call
                                    run_stats.success.inc()
                                    run_stats.latency.record((now - run_start) * run_stats.scale)
                                elif run:
                                    count_replies(run_stats, run_start, run, now)
                                run_stats, run_start, run = sink.stats, sink.start, 1
                            conn = sink.conn
                            if not conn.dirty:
                                conn.dirty = True
                                if len(conn.slots) == 1:  # nothing else to wait for (-P 1)
                                    alone.append(conn)
                                else:  # once per pass, with its replies from other hosts
                                    conn.flusher.add(conn)
                        else:
                            sink.on_reply(frame, now)
                            if self.link is not link:  # a sink closed this connection
                                break
                finally:
                    if run:
                        count_replies(run_stats, run_start, run, now)
            if decoder.error is not None and self.link is link:
                decoder.take_raw()  # raises it
        except RespProtocolError as exc:
            self._count_done(done, now)
            pool.redis_stats.upstream_cx_protocol_error.inc()
            log.warning("redis upstream %s: protocol error: %s", self.host.key, exc)
            self._drop(PROTOCOL_ERROR_FRAME, close=True)
        else:
            if self.link is link:
                self._count_done(done, now)
                if self.releasing and not self.pending:
                    pool.put_idle(self)
        for conn in alone:  # now rather than at the end of the pass: one write either way
            conn.flush()

    def _count_done(self, n: int, now: float) -> None:
        """``n`` replies came in: the counters once, and each command's time since its write."""
        if not n:
            return
        self.inflight -= n
        pool = self.pool
        pool.cluster_stats.upstream_rq_active.dec(n)
        host_stats = self.host.stats
        host_stats.rq_active.dec(n)
        host_stats.rq_success.inc(n)
        histogram = pool.redis_stats.upstream_rq_time
        sent = self.sent
        while n and sent:
            batch = sent[0]
            k = min(batch[0], n)
            histogram.record_n((now - batch[1]) * 1000.0, k)
            n -= k
            batch[0] -= k
            if not batch[0]:
                sent.popleft()

    def _handshake_reply(self, frame: bytes) -> None:
        self.handshake_pending = False
        if frame[:1] == b"-":
            if not self.pool.handshake_failed_logged:
                self.pool.handshake_failed_logged = True
                reason = frame[1:-2].decode(errors="replace")
                log.error("redis upstream %s refused %s: %s", self.host.key,
                          self.pool.handshake.split(b"\r\n")[2].decode(), reason)
            self._drop(FAILURE_FRAME, close=True)

    # ----- connection lifecycle -------------------------------------------------------------------

    def _connect(self) -> bool:
        """Start connecting, unless dead or backing off; False means: fail the command now."""
        pool = self.pool
        if self.dead or (self.retry_at and pool.loop.time() < self.retry_at):
            return False
        link = _Link(self)
        self.link = link
        self.connecting = pool.worker.connect_upstream(
            pool.cluster, self.host, link, lambda conn, failure: self._connected(link, conn, failure))
        return True

    def _connected(self, link: _Link, conn: Any, failure: str) -> None:
        if link is not self.link:  # given up meanwhile
            if conn is not None:
                conn.close(flush=False)
            return
        self.connecting = None
        if conn is None:
            self.link = None
            link.up = None
            self.backoff = BACKOFF_BASE if not self.backoff else min(BACKOFF_MAX, self.backoff * 2)
            self.retry_at = self.pool.loop.time() + self.backoff
            log.debug("redis upstream %s: %s; retrying in %.1fs", self.host.key, failure, self.backoff)
            if self.dedicated:
                self.dead = True
            self._fail_pending(FAILURE_FRAME)
            return
        self.conn = conn
        self.backoff = 0.0
        self.retry_at = 0.0
        self.decoder = ReplyDecoder()
        handshake = self.pool.handshake
        if handshake:
            self.handshake_pending = True
            conn.write(handshake)
        if self.out:
            self.flush()

    def lost(self, link: _Link, why: str) -> None:
        """The connection behind ``link`` closed or hit EOF: fail what it held."""
        if link is self.link:
            if self.pending:
                log.debug("redis upstream %s: %s with %d pending", self.host.key, why, len(self.pending))
            self._drop(FAILURE_FRAME, close=True)

    def _on_timer(self) -> None:
        self.timer = None
        if not self.inflight or self.conn is None:
            return
        pool = self.pool
        timeout = pool.settings.op_timeout
        waited = pool.loop.time() - self.last_progress
        if waited < timeout:
            self.timer = pool.loop.call_later(timeout - waited, self._on_timer)
            return
        pool.cluster_stats.upstream_rq_timeout.inc()
        self.host.stats.rq_timeout.inc()
        log.debug("redis upstream %s: op_timeout with %d pending", self.host.key, self.inflight)
        self._drop(FAILURE_FRAME, close=True)

    def _drop(self, frame: bytes, close: bool) -> None:
        """Forget the current connection and fail every pending sink with ``frame``."""
        link, self.link = self.link, None
        if link is not None:
            link.up = None
        conn, self.conn = self.conn, None
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if conn is not None and close:
            conn.close(flush=False)
        self.handshake_pending = False
        if self.dedicated:
            self.dead = True
            self.pool.forget_idle(self)
        self._fail_pending(frame)

    def _fail_pending(self, frame: bytes) -> None:
        inflight, self.inflight = self.inflight, 0
        self.sent.clear()
        if inflight:
            self.pool.cluster_stats.upstream_rq_active.dec(inflight)
            self.host.stats.rq_active.dec(inflight)
            self.host.stats.rq_error.inc(inflight)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self.out = []
        self.out_bytes = 0
        pending, self.pending = self.pending, deque()
        for sink in pending:
            sink.on_failure(frame)

    def close(self) -> None:
        """Close for good (the host left the cluster, or a dedicated connection is discarded)."""
        self.dead = True
        self._drop(FAILURE_FRAME, close=True)
