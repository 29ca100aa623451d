"""From a decoded request to the stats it charges: Envoy's vocabulary, extended to OP_MSG.

A request is classified once per distinct (opcode, command, database, collection) into a
``Plan``: the counters it bumps when it is seen and the per-name blocks (``stats``) whose
histograms its reply feeds. Plans are cached (bounded; a plan that hit ``max_stat_names`` is
not, so that ``stats_overflow`` counts requests). An OP_MSG request shape, with the query fields
that choose Envoy's per-query counters, maps to a ``Charge`` (cached likewise): the counters to
bump and the blocks its reply feeds. So the hot path for a known shape is one dict lookup and a
few ``inc()`` calls, or one ``inc(n)`` per counter for ``n`` requests of one read. For a query,
the fields Envoy reads per request (the filter's ``_id``, ``maxTimeMS``, the cursor options, the
``comment`` callsite) come from the decoder's ``RequestSummary`` (``fastpath``), read while the
command was framed; only legacy OP_QUERY bodies are walked here.

The mapping (docs/mongo.md has the full table):

* OP_MSG ``find`` is a query, as Envoy counts the 3.2 ``find`` command: ``op_query``,
  ``op_query_*``, ``collection.<c>.query.*`` and, when the comment is JSON with a
  ``callingFunction``, ``collection.<c>.callsite.<fn>.query.*``.
* Every other OP_MSG command charges ``cmd.<name>.*`` when ``name`` is in ``commands``, else
  ``cmd.unknown_command.*`` (Envoy's rule for ``$cmd`` queries). ``insert``/``update``/``delete``
  also bump ``op_insert``/``op_update``/``op_delete`` and ``collection.<c>.<op>.*``;
  ``aggregate`` on a collection charges ``collection.<c>.aggregate.*``; ``getMore`` bumps
  ``op_get_more`` and ``killCursors`` ``op_kill_cursors``.
* Legacy opcodes are counted exactly as Envoy does (OP_QUERY, OP_INSERT, OP_GET_MORE,
  OP_KILL_CURSORS, OP_COMMAND), plus OP_UPDATE / OP_DELETE, which Envoy cannot decode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from filters.mongo_proxy.fastpath import RequestSummary, request_summary
from filters.mongo_proxy.messages import (
    FIND_AWAIT_DATA,
    FIND_NO_CURSOR_TIMEOUT,
    FIND_TAILABLE,
    MSG_EXHAUST_ALLOWED,
    Message,
    OpCode,
    OpCommand,
    OpDelete,
    OpGetMore,
    OpInsert,
    OpMsg,
    OpQuery,
    OpUpdate,
)
from filters.mongo_proxy.rawbson import int_value, scan, summarize
from filters.mongo_proxy.stats import UNKNOWN_COMMAND, CommandStats, DynamicStats, MongoStats, QueryStats

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stats_shm.handles import Counter

# Legacy spellings Envoy folds into one command name (utility.cc).
_ALIASES: Final = {
    "collstats": "collStats",
    "dbstats": "dbStats",
    "findandmodify": "findAndModify",
    "getlasterror": "getLastError",
    "ismaster": "isMaster",
}
# OP_MSG commands with per-collection stats (meshproxy's extension), and their block name.
_COLLECTION_OPS: Final = {name: name for name in ("insert", "update", "delete", "aggregate")}
# Envoy's dynamic-metadata operation per command (``find`` is a query).
_METADATA_OPS: Final = {"find": "query", "insert": "insert", "update": "update", "delete": "delete"}
# Fixed-block counters of OP_MSG commands and of legacy opcodes.
_MSG_OP_COUNTERS: Final = {"insert": "op_insert", "update": "op_update", "delete": "op_delete",
                           "getMore": "op_get_more", "killCursors": "op_kill_cursors"}
_LEGACY_OP_COUNTERS: Final = {OpCode.INSERT: "op_insert", OpCode.UPDATE: "op_update",
                              OpCode.DELETE: "op_delete", OpCode.GET_MORE: "op_get_more",
                              OpCode.KILL_CURSORS: "op_kill_cursors", OpCode.COMMAND: "op_command"}
_LEGACY_COLLECTION_OPS: Final = {OpCode.INSERT: "insert", OpCode.UPDATE: "update", OpCode.DELETE: "delete"}
MAX_PLANS: Final = 4096  # distinct request shapes remembered per worker and filter config

_DOC, _ARRAY = 0x03, 0x04
_QUERY_KEYS: Final = frozenset({b"_id", b"$query", b"$maxTimeMS", b"maxTimeMS"})
_ID: Final = frozenset({b"_id"})


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request shape charges; also what the access log and dynamic metadata say of it."""

    op: str  # the opcode name, e.g. "OP_MSG"
    command: str  # "" for legacy CRUD opcodes
    database: str
    collection: str  # "" when the request names none
    counters: tuple[Counter, ...]  # bumped once per request
    stats: tuple[CommandStats, ...]  # charged with the reply (histograms)
    is_query: bool  # a find: gets Envoy's per-query counters (scatter_get, callsite...) per request
    query: QueryStats | None  # collection.<c>.query. (None: no collection, or over max_stat_names)
    metadata_op: str  # "" = no dynamic metadata
    complete: bool  # every per-name block it wanted exists (only complete plans are cached)


class Charge:
    """What one OP_MSG request shape charges: ``counters`` now, ``blocks`` with its reply.

    Compared by identity: a read of many requests groups them per ``Charge`` (``inc(n)``).
    """

    __slots__ = ("blocks", "complete", "counters", "plan")

    def __init__(self, counters: tuple[Counter, ...], blocks: tuple[CommandStats, ...], plan: Plan,
                 complete: bool) -> None:
        self.counters = counters
        self.blocks = blocks
        self.plan = plan
        self.complete = complete  # every per-name block it wanted exists (only complete ones are cached)


class Classifier:
    """Charges request-time stats and returns the plan and the blocks its reply will charge."""

    __slots__ = ("_charges", "_msg_plans", "_plans", "commands", "dynamic", "stats")

    def __init__(self, stats: MongoStats, dynamic: DynamicStats, commands: Iterable[str]) -> None:
        self.stats = stats
        self.dynamic = dynamic
        self.commands = frozenset(commands)
        self._plans: dict[tuple[int, str, str | None, str | None], Plan] = {}
        self._msg_plans: dict[tuple[str, str | None, str | None], Plan] = {}  # OP_MSG
        self._charges: dict[tuple[object, ...], Charge] = {}  # OP_MSG request shapes: the hot path

    def request(self, msg: RequestSummary | Message) -> tuple[Plan, tuple[CommandStats, ...]]:
        """Count a request from the client and return (plan, blocks for its reply).

        An OP_MSG comes as its ``RequestSummary`` (``charge``, then its ``inc()`` calls); an
        ``OpMsg`` is summarised first, other messages are legacy.
        """
        if not isinstance(msg, tuple):
            if type(msg) is not OpMsg:
                return self._legacy(msg)
            msg = request_summary(msg)
        charge = self.charge(msg)
        for counter in charge.counters:
            counter.inc()
        return charge.plan, charge.blocks

    def charge(self, s: RequestSummary) -> Charge:
        """What the OP_MSG request ``s`` charges, counting nothing itself (but ``stats_overflow``).

        The hot path: one dict lookup per request. The caller bumps ``counters`` (once per
        request, or ``inc(n)`` for ``n`` requests of one read that share the charge).
        """
        command = s[2]
        if command == "find":  # the query counters depend on the request's fields too
            key: tuple[object, ...] = (command, s[3], s[4], s[1] & MSG_EXHAUST_ALLOWED, s[8], s[9], s[10],
                                       s[11])
        else:
            key = (command, s[3], s[4])  # command, collection, database
        charge = self._charges.get(key)
        if charge is None:
            charge = self._make_charge(s)
            if charge.complete and len(self._charges) < MAX_PLANS:
                self._charges[key] = charge
        return charge

    def _make_charge(self, s: RequestSummary) -> Charge:
        key = (s[2], s[3], s[4])
        plan = self._msg_plans.get(key)
        if plan is None:
            plan = self._plan(OpCode.MSG, s[2], s[4], s[3])
            if plan.complete and len(self._msg_plans) < MAX_PLANS:
                self._msg_plans[key] = plan
        if not plan.is_query:
            return Charge(plan.counters, plan.stats, plan, plan.complete)
        counters = list(plan.counters)
        if s[1] & MSG_EXHAUST_ALLOWED:
            counters.append(self.stats.op_query_exhaust)
        blocks, complete = self._query_counters(counters, plan, s[10], s[8], s[9], s[11])
        return Charge(tuple(counters), blocks, plan, complete and plan.complete)

    # ----- plans ---------------------------------------------------------------------------------

    def _plan(self, op: OpCode, command: str, database: str | None, collection: str | None) -> Plan:
        key = (op, command, database, collection)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make_plan(op, command, database or "", collection or "")
            # An incomplete plan is rebuilt per request, so that stats_overflow counts requests.
            if plan.complete and len(self._plans) < MAX_PLANS:
                self._plans[key] = plan
        return plan

    def _make_plan(self, op: OpCode, command: str, database: str, collection: str) -> Plan:
        s, dynamic = self.stats, self.dynamic
        counters: list[Counter] = []
        stats: list[CommandStats] = []
        query = None
        collection_op = ""
        wanted = 0  # per-name blocks asked for; complete when all of them exist
        if op is OpCode.MSG:
            counters.append(s.op_msg)
        if command == "find":  # OP_MSG, or an OP_QUERY (which counts op_query itself)
            if op is OpCode.MSG:
                counters.append(s.op_query)
            if collection:
                wanted += 1
                query = dynamic.query(collection)
            if query is not None:
                counters.append(query.total)
                stats.append(query)
        elif command:
            wanted += 1
            block = dynamic.command(command if command in self.commands else UNKNOWN_COMMAND)
            if block is not None:
                counters.append(block.total)
                stats.append(block)
            if op is OpCode.MSG:
                counter = _MSG_OP_COUNTERS.get(command)
                if counter is not None:
                    counters.append(getattr(s, counter))
                collection_op = _COLLECTION_OPS.get(command, "")
        else:  # a legacy opcode
            counter = _LEGACY_OP_COUNTERS.get(op)
            if counter is not None:
                counters.append(getattr(s, counter))
            collection_op = _LEGACY_COLLECTION_OPS.get(op, "")
        if collection_op and collection:
            wanted += 1
            block = dynamic.collection(collection, collection_op)
            if block is not None:
                counters.append(block.total)
                stats.append(block)
        metadata_op = (_METADATA_OPS.get(command) or _LEGACY_COLLECTION_OPS.get(op, "")) if collection else ""
        return Plan(f"OP_{op.name}", command, database, collection, tuple(counters), tuple(stats),
                    command == "find", query, metadata_op, len(stats) == wanted)

    # ----- queries ---------------------------------------------------------------------------------

    def _charge_query(self, plan: Plan, id_type: int, max_time_ms: int | None, options: int,
                      comment: str | None) -> tuple[CommandStats, ...]:
        """Count Envoy's per-query counters now; return the blocks the reply charges."""
        counters: list[Counter] = []
        blocks, _ = self._query_counters(counters, plan, id_type, max_time_ms, options, comment)
        for counter in counters:
            counter.inc()
        return blocks

    def _query_counters(self, counters: list[Counter], plan: Plan, id_type: int, max_time_ms: int | None,
                        options: int, comment: str | None) -> tuple[tuple[CommandStats, ...], bool]:
        """Append Envoy's per-query counters to ``counters``; return (the blocks the reply charges
        with the callsite's, whether the callsite block it wanted exists)."""
        s = self.stats
        if max_time_ms is None or max_time_ms < 1:
            counters.append(s.op_query_no_max_time)
        if options:
            if options & FIND_TAILABLE:
                counters.append(s.op_query_tailable_cursor)
            if options & FIND_AWAIT_DATA:
                counters.append(s.op_query_await_data)
            if options & FIND_NO_CURSOR_TIMEOUT:
                counters.append(s.op_query_no_cursor_timeout)
        block = plan.query
        callsite = None
        function = calling_function(comment) if comment else None
        complete = True
        if function and plan.collection:
            callsite = self.dynamic.callsite(plan.collection, function)
            if callsite is not None:
                counters.append(callsite.total)
            else:
                complete = False
        if id_type == 0:  # no _id: a scatter get (also Envoy's default, with no filter at all)
            counters.append(s.op_query_scatter_get)
            if block is not None:
                counters.append(block.scatter_get)
            if callsite is not None:
                counters.append(callsite.scatter_get)
        elif id_type in (_DOC, _ARRAY):
            counters.append(s.op_query_multi_get)
            if block is not None:
                counters.append(block.multi_get)
            if callsite is not None:
                counters.append(callsite.multi_get)
        return (plan.stats if callsite is None else (*plan.stats, callsite)), complete

    # ----- legacy opcodes ------------------------------------------------------------------------

    def _legacy(self, msg: Message) -> tuple[Plan, tuple[CommandStats, ...]]:
        if isinstance(msg, OpQuery):
            return self._legacy_query(msg)
        if isinstance(msg, OpInsert | OpUpdate | OpDelete | OpGetMore):
            plan = self._plan(msg.op_code, "", msg.database, msg.collection)
        elif isinstance(msg, OpCommand):
            plan = self._plan(msg.op_code, "", msg.database, None)
        else:  # OP_KILL_CURSORS, or an OP_COMPRESSED left compressed
            plan = self._plan(msg.op_code, "", None, None)
        for counter in plan.counters:
            counter.inc()
        return plan, plan.stats

    def _legacy_query(self, msg: OpQuery) -> tuple[Plan, tuple[CommandStats, ...]]:
        s = self.stats
        s.op_query.inc()
        if msg.tailable_cursor:
            s.op_query_tailable_cursor.inc()
        if msg.no_cursor_timeout:
            s.op_query_no_cursor_timeout.inc()
        if msg.await_data:
            s.op_query_await_data.inc()
        if msg.exhaust:
            s.op_query_exhaust.inc()
        command = msg.command
        buf = bytes(msg.query)
        if command is not None:  # a command on "<db>.$cmd"
            command = _ALIASES.get(command, command)
            if command != "find":
                plan = self._plan(OpCode.QUERY, command, msg.database, "")
                for counter in plan.counters:
                    counter.inc()
                return plan, plan.stats
            start, stop = _command_document(buf)
            summary = msg.summary if start == 0 else summarize(buf, start, stop)
            plan = self._plan(OpCode.QUERY, "find", msg.database, summary.collection)
            for counter in plan.counters:
                counter.inc()
            # The cursor options of an OP_QUERY are its flags, counted above.
            return plan, self._charge_query(plan, summary.filter_id_type, summary.max_time_ms, 0, msg.comment)
        # A plain query on "<db>.<collection>": Envoy's per-collection query stats.
        collection = msg.collection or ""
        plan = self._plan(OpCode.QUERY, "find", msg.database, collection)
        for counter in plan.counters:
            counter.inc()
        _, found = scan(buf, 0, len(buf), _QUERY_KEYS)
        max_time = int_value(buf, found.get(b"$maxTimeMS") or found.get(b"maxTimeMS"))
        id_element = found.get(b"_id")
        id_type = id_element[0] if id_element is not None else 0
        inner = found.get(b"$query")
        if id_type == 0 and inner is not None and inner[0] == _DOC:
            _, in_query = scan(buf, inner[1], inner[2], _ID)
            id_element = in_query.get(b"_id")
            id_type = id_element[0] if id_element is not None else 0
        return plan, self._charge_query(plan, id_type, max_time, 0, msg.comment)


def _command_document(buf: bytes) -> tuple[int, int]:
    """The command inside an OP_QUERY ``$cmd`` query: the query itself, or its ``$query``."""
    first, _ = scan(buf, 0, len(buf), frozenset())
    if first is not None and first[0] == b"$query" and first[1][0] == _DOC:
        return first[1][1], first[1][2]
    return 0, len(buf)


def calling_function(comment: str) -> str | None:
    """Envoy's callsite: the ``callingFunction`` string of a comment that is a JSON object."""
    if not comment.startswith("{"):
        return None
    try:
        value = json.loads(comment)
    except ValueError:
        return None
    function = value.get("callingFunction") if isinstance(value, dict) else None
    return function if isinstance(function, str) and function else None
