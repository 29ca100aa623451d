"""mongo_proxy's stats: the fixed block ``mongo.<prefix>.*`` and the per-name blocks made at run time.

Fixed block (envoy-subset.md §5.3, plus meshproxy's extensions marked below): resolved once per
worker and filter config, the hot path only calls ``inc()``.

Per-name blocks are Envoy's dynamic stats, created the first time a name is seen:

* ``cmd.<command>.``                                (``CommandStats``)
* ``collection.<coll>.query.``                      (``QueryStats``)
* ``collection.<coll>.callsite.<fn>.query.``        (``QueryStats``)
* ``collection.<coll>.{insert,update,delete,aggregate}.``  (``CommandStats``; a meshproxy extension)

``DynamicStats`` is the per-worker cache of these blocks, shared by every connection of one
filter config. It is bounded: a block is created only while the names it adds stay within
``max_stat_names``; past that the operation is counted in ``stats_overflow`` and gets no
per-name stats (nothing is created, nothing raises). ``cmd.*`` has at most ``len(commands) + 1``
blocks (unlisted commands share ``cmd.unknown_command``), so only collections and callsites can
run into the cap.

A name segment (collection, callsite) becomes one stat token: every character other than a
letter, a digit, ``_`` or ``-`` (notably ``.``) is replaced with ``_`` and it is cut to 100
characters, so that Envoy's tag extractor ``mongo.*.collection.$.**.query.*`` captures the whole
collection (docs/mongo.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Final

from stats_shm.block import StatBlock, StatsScope
from stats_shm.kinds import Unit

if TYPE_CHECKING:
    from stats_shm.handles import Counter


class MongoStats(StatBlock):
    """``mongo.<stat_prefix>.*``: Envoy's names, then meshproxy's (after the blank line)."""

    COUNTERS = (
        "op_get_more",
        "op_insert",
        "op_kill_cursors",
        "op_query",
        "op_query_tailable_cursor",
        "op_query_no_cursor_timeout",
        "op_query_await_data",
        "op_query_exhaust",
        "op_query_no_max_time",
        "op_query_scatter_get",
        "op_query_multi_get",
        "op_reply",
        "op_reply_cursor_not_found",
        "op_reply_query_failure",
        "op_reply_valid_cursor",
        "op_command",
        "op_command_reply",
        "cx_destroy_local_with_active_rq",
        "cx_destroy_remote_with_active_rq",
        "decoding_error",
        "delays_injected",

        "op_msg",  # OP_MSG requests (every command of a modern driver)
        "op_update",  # update commands and legacy OP_UPDATE
        "op_delete",  # delete commands and legacy OP_DELETE
        "op_compressed",  # messages (both directions) that arrived in OP_COMPRESSED
        "op_unacknowledged",  # requests with moreToCome: no reply will come
        "slow_operation",  # operations at or over slow_operation_threshold (when set)
        "stats_overflow",  # operations that got no per-name stats: max_stat_names reached
    )
    GAUGES = ("op_query_active",)


class CommandStats(StatBlock):
    """A per-name block charged once per request (``total``) and once per reply (histograms)."""

    COUNTERS: ClassVar[tuple[str, ...]] = ("total",)
    HISTOGRAMS = ("reply_num_docs", "reply_size", "reply_time_ms")
    HISTOGRAM_UNITS: ClassVar[Mapping[str, Unit]] = {
        "reply_num_docs": Unit.UNSPECIFIED,
        "reply_size": Unit.BYTES,
        "reply_time_ms": Unit.MILLISECONDS,
    }


class QueryStats(CommandStats):
    """``collection.<c>.query.`` and its callsite variant: Envoy adds the query-type counters."""

    COUNTERS = ("total", "scatter_get", "multi_get")


UNKNOWN_COMMAND: Final = "unknown_command"
MAX_TOKEN_LENGTH: Final = 100
_NOT_TOKEN = re.compile(r"[^\w\-]")


def stat_token(text: str) -> str:
    """``text`` as one stat-name token (see the module docstring)."""
    return _NOT_TOKEN.sub("_", text[:MAX_TOKEN_LENGTH]) or "_"


def _size(block: type[StatBlock]) -> int:
    return len(block.COUNTERS) + len(block.GAUGES) + len(block.HISTOGRAMS)


class DynamicStats:
    """The bounded cache of per-name blocks of one filter config in one worker."""

    __slots__ = ("_blocks", "_names", "_overflow", "_root", "_store", "limit")

    def __init__(self, store: StatsScope, root: str, limit: int, overflow: Counter) -> None:
        self._store = store
        self._root = root  # "mongo.<stat_prefix>."
        self.limit = limit
        self._overflow = overflow
        self._blocks: dict[tuple[str, ...], CommandStats] = {}
        self._names = 0

    @property
    def names(self) -> int:
        """Stat names created so far (each block adds its counters and histograms)."""
        return self._names

    def command(self, name: str) -> CommandStats | None:
        """``cmd.<name>.`` (``name`` is a listed command or ``unknown_command``)."""
        block = self._blocks.get(("cmd", name))
        return block if block is not None else self._create(("cmd", name), CommandStats, f"cmd.{name}.")

    def collection(self, collection: str, op: str) -> CommandStats | None:
        """``collection.<collection>.<op>.`` for an ``op`` other than "query"."""
        key = ("collection", collection, op)
        block = self._blocks.get(key)
        if block is not None:
            return block
        return self._create(key, CommandStats, f"collection.{stat_token(collection)}.{op}.")

    def query(self, collection: str) -> QueryStats | None:
        """``collection.<collection>.query.``."""
        key = ("collection", collection, "query")
        block = self._blocks.get(key)
        if block is None:
            block = self._create(key, QueryStats, f"collection.{stat_token(collection)}.query.")
        assert block is None or isinstance(block, QueryStats)
        return block

    def callsite(self, collection: str, function: str) -> QueryStats | None:
        """``collection.<collection>.callsite.<function>.query.``."""
        key = ("callsite", collection, function)
        block = self._blocks.get(key)
        if block is None:
            block = self._create(
                key, QueryStats, f"collection.{stat_token(collection)}.callsite.{stat_token(function)}.query."
            )
        assert block is None or isinstance(block, QueryStats)
        return block

    def _create(self, key: tuple[str, ...], kind: type[CommandStats], suffix: str) -> CommandStats | None:
        size = _size(kind)
        if self._names + size > self.limit:
            self._overflow.inc()
            return None
        self._names += size
        block = kind(self._store, self._root + suffix)
        self._blocks[key] = block
        return block
