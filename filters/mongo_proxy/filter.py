"""mongo_proxy: a passive sniffer of MongoDB traffic, placed before tcp_proxy (envoy-subset.md §5.3).

Per connection, ``on_data`` hands the client's bytes to one ``MongoDecoder`` and ``on_write`` the
server's bytes to another (``summaries``: OP_MSG as ``fastpath`` tuples, other opcodes as
messages); they become stats (``operations.Classifier``), access-log lines and dynamic metadata.
The filter returns CONTINUE and never changes, drops or reorders a byte. The one exception is the
delay fault, which holds the client's bytes for a while (below).

Hot path (an OP_MSG request, then its reply, no access log / metadata / delay): the request's
``Charge`` (one dict lookup, ``operations``) and its counters, one dict entry in flight, then
three histogram records and the gauge. A read that carries several messages (pipelining) is
counted in one go at the end of the read: requests grouped per ``Charge`` (``inc(n)``), replies
per (request start, blocks, docs, size) (``record_n(value, n)``), the gauge once; the requests of
one read share one start time, and the replies of one read one arrival time. Anything else
(``extras``, ``moreToCome``, compressed, failed replies, legacy opcodes) takes the general methods,
as it comes. With ``log_query_values`` the decoders read every message in full, as the log needs
the command.

Rules:

* **Replies** are matched to requests by ``responseTo`` == ``requestID`` through a bounded dict of
  requests in flight (``MAX_IN_FLIGHT``; beyond it a request is counted but not timed).
  ``moreToCome`` requests expect no reply; a ``moreToCome`` reply (exhaust cursor, streaming
  hello) keeps its request in flight under the reply's own requestID, which the next reply
  answers. ``op_query_active`` is the number of requests in flight; a close with requests in
  flight bumps ``cx_destroy_{local,remote}_with_active_rq``.
* **Robustness**: any ``MongoProtocolError`` (bad length, truncated BSON, a TLS handshake, not
  Mongo at all, a reply opcode sent by the client...) bumps ``decoding_error`` once and stops decoding
  for this connection: both decoders are dropped and bytes flow on untouched. Nothing is logged
  per bad message. An exception of any other kind is a meshproxy bug: it is logged once per
  worker and handled the same way, so it never escapes into the connection.
* **Memory**: a decoder drained after every feed holds less than one message (a declared length
  over 48,000,000 bytes is refused before any body is buffered); in-flight requests are capped;
  bytes held by a delay pause downstream reading past ``MAX_HELD_BYTES``.
* **Delay fault** (``delay``): when a request is decoded and no delay is pending, it is delayed
  with probability ``numerator / denominator``: the chunk that carried it is held
  (STOP_ITERATION), every later chunk queues behind it, and after ``fixed_delay`` all of them are
  released in order with ``callbacks.inject_read_data(..., after=self)``. Requests seen while a
  delay is pending are not delayed again (Envoy's rule), and replies are never delayed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from filters.api import ConnectionEvent, FilterStatus, NetworkFilter, WorkerContext
from filters.mongo_proxy.access_log import AccessLogWriter, LogEntry, open_writer, query_json
from filters.mongo_proxy.codec import MongoDecoder
from filters.mongo_proxy.config import MongoProxyConfig
from filters.mongo_proxy.fastpath import (
    REPLIES,
    REQUESTS,
    ReplySummary,
    RequestSummary,
    reply_summary,
    request_summary,
)
from filters.mongo_proxy.messages import (
    MSG_MORE_TO_COME,
    Compressed,
    Compressor,
    Message,
    MongoProtocolError,
    OpCommand,
    OpCommandReply,
    OpGetMore,
    OpMsg,
    OpQuery,
    OpReply,
)
from filters.mongo_proxy.operations import Charge, Classifier, Plan
from filters.mongo_proxy.stats import CommandStats, DynamicStats, MongoStats

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("meshproxy.mongo_proxy")

_monotonic = time.monotonic
_CONTINUE = FilterStatus.CONTINUE
_STOP = FilterStatus.STOP_ITERATION
MAX_IN_FLIGHT: Final = 1024
MAX_HELD_BYTES: Final = 1024 * 1024
CURSOR_NOT_FOUND: Final = 43  # the server's error code for an unknown cursor id

# A request in flight: (monotonic start, blocks its reply charges, access-log entry or None).
InFlight = tuple[float, tuple[CommandStats, ...], LogEntry | None]

_bug_logged = False


class Shared:
    """What every connection of one filter config in one worker shares (built in ``build``)."""

    __slots__ = ("classifier", "config", "count_documents", "delay", "extras", "readers", "slow_ms", "stats",
                 "writer")

    def __init__(self, config: MongoProxyConfig, stats: MongoStats, classifier: Classifier,
                 writer: AccessLogWriter | None) -> None:
        self.config = config
        self.stats = stats
        self.classifier = classifier
        self.writer = writer
        self.slow_ms = config.slow_operation_threshold * 1000.0
        delay = config.delay
        self.delay = delay if delay is not None and delay.numerator > 0 else None
        # The fast path reads no values beyond what stats need; log_query_values logs the whole
        # command, so it takes the full decoder (``OpMsg`` messages, summarised here).
        self.readers = (None, None) if config.log_query_values else (REQUESTS, REPLIES)
        self.count_documents = writer is not None  # request_docs is only logged
        # Anything a request does beyond stats and waiting for its reply (the hot path skips it).
        self.extras = writer is not None or config.emit_dynamic_metadata or self.delay is not None


class MongoProxyFilter(NetworkFilter):
    """One sniffed connection (see the module docstring)."""

    inspects_data = True

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.stats = shared.stats
        self.classifier = shared.classifier
        self.writer = shared.writer
        self.delay = shared.delay
        self.emit_metadata = shared.config.emit_dynamic_metadata
        self.extras = shared.extras
        requests, replies = shared.readers
        self.requests: MongoDecoder[RequestSummary] | None = MongoDecoder(
            summaries=requests, count_documents=shared.count_documents
        )
        self.replies: MongoDecoder[ReplySummary] | None = MongoDecoder(summaries=replies)
        self.in_flight: dict[int, InFlight] = {}
        self.held: list[tuple[bytes, bool]] | None = None  # chunks queued behind a delay
        self.held_bytes = 0
        self.read_paused = False
        self.delay_timer: asyncio.TimerHandle | None = None
        self.dynamic_metadata: dict[str, list[str]] = {}  # "db.collection" -> operations
        self.closed = False

    # ----- downstream -> upstream ---------------------------------------------------------------

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        if self.emit_metadata:
            self.dynamic_metadata.clear()
        decoder = self.requests
        if data and decoder is not None:
            try:
                items = decoder.summaries(data)
                if len(items) == 1:
                    s = items[0]
                    if isinstance(s, tuple):  # an OP_MSG: every request of a modern driver
                        self._on_msg_request(s, None)
                    else:
                        self._on_request(s)
                elif items:
                    self._on_requests(items)
                if decoder.error is not None:
                    raise MongoProtocolError(decoder.error)
            except Exception as exc:  # a protocol error, or a bug: never reaches the connection
                self._stop_sniffing(exc)
        if self.held is not None:  # a delay is pending, or a request of this chunk started one
            self._hold(data, end_stream)
            return _STOP
        return _CONTINUE

    def _on_msg_request(self, s: RequestSummary, msg: OpMsg | None) -> None:
        """Count an OP_MSG request (``msg``: its full message, when the log needs the command)."""
        if s[6] is not None or s[1] & MSG_MORE_TO_COME or self.extras:
            self._on_msg_request_general(s, msg)
            return
        # The hot path: the charge's counters, then _requested's in-flight part, inline.
        charge = self.classifier.charge(s)
        for counter in charge.counters:
            counter.inc()
        in_flight = self.in_flight
        request_id = s[0]
        if request_id in in_flight:  # a reused id: the newer request wins
            in_flight[request_id] = (_monotonic(), charge.blocks, None)
        elif len(in_flight) < MAX_IN_FLIGHT:
            in_flight[request_id] = (_monotonic(), charge.blocks, None)
            self.stats.op_query_active.inc()

    def _on_requests(self, items: list[RequestSummary | Message]) -> None:
        """Count the requests of one read: plain OP_MSG requests batched per charge, counted
        (``inc(n)``) once at the end of the read; anything else as it comes."""
        charge_of = self.classifier.charge
        in_flight = self.in_flight
        pending: dict[Charge, int] = {}
        now = _monotonic()  # the requests of one read arrived together
        added = 0
        try:
            for s in items:
                if not isinstance(s, tuple):
                    self._on_request(s)
                    continue
                if s[6] is not None or s[1] & MSG_MORE_TO_COME or self.extras:
                    self._on_msg_request_general(s, None)
                    continue
                charge = charge_of(s)
                pending[charge] = pending.get(charge, 0) + 1
                request_id = s[0]
                if request_id in in_flight:  # a reused id: the newer request wins
                    in_flight[request_id] = (now, charge.blocks, None)
                elif len(in_flight) < MAX_IN_FLIGHT:
                    in_flight[request_id] = (now, charge.blocks, None)
                    added += 1
        finally:  # also when a message of the read breaks the protocol: the ones before count
            for charge, n in pending.items():
                for counter in charge.counters:
                    counter.inc(n)
            if added:
                self.stats.op_query_active.inc(added)

    def _on_msg_request_general(self, s: RequestSummary, msg: OpMsg | None) -> None:
        """An OP_MSG request off the hot path: compressed, ``moreToCome``, or with extras."""
        stats = self.stats
        if s[6] is not None:
            stats.op_compressed.inc()
        plan, blocks = self.classifier.request(s)
        unacknowledged = s[1] & MSG_MORE_TO_COME  # no reply will come
        if unacknowledged:
            stats.op_unacknowledged.inc()
        entry = None
        if self.writer is not None:
            entry = self._log_entry(plan, s[0], s[5], s[7] or 0, s[6], bool(unacknowledged), msg)
        self._requested(s[0], not unacknowledged, plan, blocks, entry)

    def _on_request(self, msg: Message) -> None:
        """Count a request decoded in full: legacy opcodes, or an OP_MSG without the fast path."""
        if type(msg) is OpMsg:
            self._on_msg_request(request_summary(msg), msg)
            return
        if isinstance(msg, OpReply | OpCommandReply):
            raise MongoProtocolError(f"the client sent a reply ({msg.op_code.name})")
        if msg.compressor is not None:
            self.stats.op_compressed.inc()
        plan, blocks = self.classifier.request(msg)
        expects_reply = isinstance(msg, OpQuery | OpGetMore | OpCommand | Compressed)
        entry = None
        if self.writer is not None:
            entry = self._log_entry(plan, msg.request_id, msg.wire_size, 0, msg.compressor, False, msg)
        self._requested(msg.request_id, expects_reply, plan, blocks, entry)

    def _requested(self, request_id: int, expects_reply: bool, plan: Plan, blocks: tuple[CommandStats, ...],
                   entry: LogEntry | None) -> None:
        """What every request does after its stats: log, wait for the reply, metadata, delay."""
        if expects_reply:
            in_flight = self.in_flight
            if request_id in in_flight:  # a reused id: the newer request wins
                in_flight[request_id] = (_monotonic(), blocks, entry)
            elif len(in_flight) < MAX_IN_FLIGHT:
                in_flight[request_id] = (_monotonic(), blocks, entry)
                self.stats.op_query_active.inc()
        elif entry is not None and self.shared.slow_ms <= 0.0:
            assert self.writer is not None
            self.writer.write(entry.line(None))
        if self.emit_metadata and plan.metadata_op:
            resource = f"{plan.database}.{plan.collection}"
            self.dynamic_metadata.setdefault(resource, []).append(plan.metadata_op)
        delay = self.delay
        if delay is not None and self.held is None and random.randrange(delay.denominator) < delay.numerator:
            self.held = []
            self.stats.delays_injected.inc()
            self.delay_timer = self.callbacks.loop.call_later(delay.fixed_delay, self._release)

    # ----- upstream -> downstream -----------------------------------------------------------------

    def on_write(self, data: bytes, end_stream: bool) -> FilterStatus:
        decoder = self.replies
        if data and decoder is not None:
            try:
                items = decoder.summaries(data)
                if len(items) == 1:
                    s = items[0]
                    if isinstance(s, tuple):
                        self._on_msg_reply(s)
                    else:
                        self._on_reply(s)
                elif items:
                    self._on_replies(items)
                if decoder.error is not None:
                    raise MongoProtocolError(decoder.error)
            except Exception as exc:  # as in on_data
                self._stop_sniffing(exc)
        return _CONTINUE

    def _on_replies(self, items: list[ReplySummary | Message]) -> None:
        """Count the replies of one read: plain OP_MSG replies batched, counted at the end of the
        read (``inc(n)``, ``record_n``: one call per distinct value); anything else as it comes."""
        in_flight = self.in_flight
        pending: dict[tuple[float, tuple[CommandStats, ...], int, int], int] = {}
        replies = cursors = 0
        now = _monotonic()  # the replies of one read arrived together
        try:
            for s in items:
                # Off the hot path: legacy, compressed, failed (ok: 0) or exhaust (moreToCome) replies.
                if not isinstance(s, tuple):
                    self._on_reply(s)
                    continue
                if s[9] is not None or s[4] == 0.0 or s[2] & MSG_MORE_TO_COME:
                    self._on_msg_reply(s)
                    continue
                replies += 1
                if s[7]:
                    cursors += 1
                request = in_flight.pop(s[0], None)
                if request is None:
                    continue
                docs = s[8]
                if docs is None:
                    docs = 1  # the reply document itself
                if request[2] is not None:  # an access-log entry: its line needs this reply
                    self._replied(request, s[1], False, s[3], docs, True, None, None)
                    continue
                key = (request[0], request[1], docs, s[3])
                pending[key] = pending.get(key, 0) + 1
        finally:  # also when a message of the read breaks the protocol: the ones before count
            stats = self.stats
            if replies:
                stats.op_reply.inc(replies)
            if cursors:
                stats.op_reply_valid_cursor.inc(cursors)
            answered = 0
            for (start, blocks, docs, size), n in pending.items():
                ms = (now - start) * 1000.0
                for block in blocks:
                    block.reply_num_docs.record_n(docs, n)
                    block.reply_size.record_n(size, n)
                    block.reply_time_ms.record_n(ms, n)
                answered += n
            if answered:
                stats.op_query_active.dec(answered)

    def _on_msg_reply(self, s: ReplySummary) -> None:
        response_to, request_id, flags, size, ok, code, errmsg, cursor_id, docs, compressor = s
        stats = self.stats
        if compressor is not None:
            stats.op_compressed.inc()
        stats.op_reply.inc()
        if cursor_id:
            stats.op_reply_valid_cursor.inc()
        success = True
        if ok == 0.0:
            success = False
            stats.op_reply_query_failure.inc()
            if code == CURSOR_NOT_FOUND:
                stats.op_reply_cursor_not_found.inc()
        if docs is None:
            docs = 1  # the reply document itself
        request = self.in_flight.pop(response_to, None)
        if request is None:
            return
        start, blocks, entry = request
        more_to_come = flags & MSG_MORE_TO_COME  # an exhaust cursor: the next reply answers this one
        if entry is not None or more_to_come:
            self._replied(request, request_id, bool(more_to_come), size, docs, success, code, errmsg)
            return
        # The hot path: _replied without the exhaust and log cases, inline.
        ms = (_monotonic() - start) * 1000.0
        for block in blocks:
            block.reply_num_docs.record(docs)
            block.reply_size.record(size)
            block.reply_time_ms.record(ms)
        stats.op_query_active.dec()

    def _on_reply(self, msg: Message) -> None:
        """Count a reply decoded in full: legacy opcodes, or an OP_MSG without the fast path."""
        if type(msg) is OpMsg:
            self._on_msg_reply(reply_summary(msg))
            return
        stats = self.stats
        if msg.compressor is not None:
            stats.op_compressed.inc()
        ok = True
        if isinstance(msg, OpReply):
            stats.op_reply.inc()
            if msg.cursor_id:
                stats.op_reply_valid_cursor.inc()
            if msg.cursor_not_found:
                stats.op_reply_cursor_not_found.inc()
            if msg.query_failure:
                ok = False
                stats.op_reply_query_failure.inc()
            size, docs = msg.documents_size, msg.number_returned
        elif isinstance(msg, OpCommandReply):
            stats.op_command_reply.inc()
            size, docs = len(msg.command_reply), 1 + msg.output_doc_count
        elif type(msg) is Compressed:  # its compressor is unavailable: counted, not read
            stats.op_reply.inc()
            size, docs = msg.uncompressed_size, 0
        else:
            raise MongoProtocolError(f"the server sent a request ({msg.op_code.name})")
        request = self.in_flight.pop(msg.response_to, None)
        if request is not None:
            self._replied(request, msg.request_id, False, size, docs, ok, None, None)

    def _replied(self, request: InFlight, request_id: int, more_to_come: bool, size: int, docs: int, ok: bool,
                 code: int | None, errmsg: str | None) -> None:
        """Charge a reply to its request (taken out of ``in_flight``): histograms, then the log."""
        start, blocks, entry = request
        now = _monotonic()
        ms = (now - start) * 1000.0
        for block in blocks:
            block.reply_num_docs.record(docs)
            block.reply_size.record(size)
            block.reply_time_ms.record(ms)
        if more_to_come and len(self.in_flight) < MAX_IN_FLIGHT:  # the next reply answers this one
            self.in_flight[request_id] = (now, blocks, entry)
        else:
            self.stats.op_query_active.dec()
        if entry is not None:
            self._log_reply(entry, ms, size, docs, ok, code, errmsg)

    # ----- connection events --------------------------------------------------------------------

    def on_event(self, event: ConnectionEvent) -> None:
        self.closed = True
        if self.delay_timer is not None:
            self.delay_timer.cancel()
            self.delay_timer = None
        self.held = None
        if self.in_flight:
            if event is ConnectionEvent.REMOTE_CLOSE:
                self.stats.cx_destroy_remote_with_active_rq.inc()
            else:
                self.stats.cx_destroy_local_with_active_rq.inc()
        self._forget_in_flight()
        writer = self.shared.writer
        if writer is not None and writer.pending:
            writer.flush()

    # ----- internals ------------------------------------------------------------------------------

    def _stop_sniffing(self, exc: Exception) -> None:
        if not isinstance(exc, MongoProtocolError):  # a meshproxy bug: logged once per worker
            global _bug_logged
            if not _bug_logged:
                _bug_logged = True
                log.error("mongo_proxy: unexpected error while sniffing; decoding stops for the "
                          "connection (logged once per worker)", exc_info=exc)
        if self.requests is None:
            return
        self.requests = self.replies = None
        self.stats.decoding_error.inc()
        self._forget_in_flight()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("mongo_proxy: decoding stopped for connection %s: %s", self.callbacks.info.id, exc)

    def _forget_in_flight(self) -> None:
        if self.in_flight:
            self.stats.op_query_active.dec(len(self.in_flight))
            self.in_flight.clear()

    def _hold(self, data: bytes, end_stream: bool) -> None:
        assert self.held is not None
        self.held.append((data, end_stream))
        self.held_bytes += len(data)
        if self.held_bytes > MAX_HELD_BYTES and not self.read_paused:
            self.read_paused = True
            self.callbacks.read_disable(True)

    def _release(self) -> None:
        """The delay is over: pass the held chunks on, in order."""
        self.delay_timer = None
        held, self.held, self.held_bytes = self.held or [], None, 0
        if self.read_paused:
            self.read_paused = False
            self.callbacks.read_disable(False)
        for data, end_stream in held:
            if self.closed:
                return
            self.callbacks.inject_read_data(data, end_stream, after=self)

    def _log_entry(self, plan: Plan, request_id: int, size: int, docs: int, compressor: Compressor | None,
                   more_to_come: bool, msg: Message | None) -> LogEntry:
        info = self.callbacks.info
        host, port = info.remote_address
        ns = f"{plan.database}.{plan.collection}" if plan.collection else plan.database
        fields: dict[str, object] = {
            "connection": info.id, "downstream": f"{host}:{port}", "op": plan.op, "command": plan.command,
            "ns": ns, "request_id": request_id, "request_size": size, "request_docs": docs,
            "compressor": compressor.name.lower() if compressor is not None else None,
            "more_to_come": more_to_come,
        }
        if self.shared.config.log_query_values and isinstance(msg, OpMsg | OpQuery):
            try:
                fields["query"] = query_json(msg.document())
            except MongoProtocolError:
                fields["query"] = None
        return LogEntry(fields)

    def _log_reply(self, entry: LogEntry, ms: float, size: int, docs: int, ok: bool, code: int | None,
                   errmsg: str | None) -> None:
        shared = self.shared
        if ms < shared.slow_ms:
            return
        if shared.slow_ms > 0.0:
            self.stats.slow_operation.inc()
        reply: dict[str, object] = {"reply_time_ms": round(ms, 3), "reply_size": size, "reply_docs": docs,
                                    "ok": ok, "error_code": code}
        if shared.config.log_query_values and errmsg is not None:
            reply["errmsg"] = errmsg
        assert shared.writer is not None
        shared.writer.write(entry.line(reply))


def build(config: MongoProxyConfig, worker: WorkerContext) -> Callable[[], NetworkFilter]:
    """Bind stats, the per-name cache and the access log once per worker; return the factory."""
    root = f"mongo.{config.stat_prefix}."
    stats = MongoStats(worker.stats, root)
    dynamic = DynamicStats(worker.stats, root, config.max_stat_names, stats.stats_overflow)
    classifier = Classifier(stats, dynamic, config.commands)
    writer = open_writer(config.access_log, worker.loop) if config.access_log else None
    shared = Shared(config, stats, classifier, writer)

    def make() -> NetworkFilter:
        return MongoProxyFilter(shared)

    return make
