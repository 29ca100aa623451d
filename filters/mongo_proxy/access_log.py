"""mongo_proxy's access log: one JSON line per operation, appended to the configured file.

An operation is logged when its reply arrives (so the line has the reply's time, size, document
count and error code), or when it is seen if no reply will come (``moreToCome`` requests, legacy
OP_INSERT / OP_UPDATE / OP_DELETE / OP_KILL_CURSORS). Keys (docs/mongo.md)::

    {"time": "2026-01-31T12:00:00.123Z", "connection": 7, "downstream": "127.0.0.1:50312",
     "op": "OP_MSG", "command": "find", "ns": "app.users", "request_id": 12, "request_size": 181,
     "request_docs": 0, "compressor": null, "more_to_come": false, "reply_time_ms": 0.412,
     "reply_size": 96, "reply_docs": 1, "ok": true, "error_code": null}

``time`` is when the request was seen (UTC, milliseconds). Values from the traffic are not
logged unless ``log_query_values`` is set (a meshproxy extension): then ``query`` holds the
command document as MongoDB extended JSON (cut to ``MAX_QUERY_CHARS``) and ``errmsg`` the
server's error message, which may quote values too. Bulk payloads (OP_MSG document sequences)
are only counted, in ``request_docs``.

The writer is opened once per worker process and path (``open_writer``), shared by every filter
config and connection that names the path. Lines are buffered and written with one ``write(2)``
on an ``O_APPEND`` descriptor (so workers appending to the same file do not interleave inside a
line) every ``FLUSH_INTERVAL_S``, when ``MAX_BUFFER`` bytes are pending, and when a connection
closes. A write error is logged once and the pending lines are dropped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("meshproxy.mongo_proxy")

FLUSH_INTERVAL_S: Final = 1.0  # Envoy flushes access logs every 10 s by default
MAX_BUFFER: Final = 64 * 1024
MAX_QUERY_CHARS: Final = 4096


class AccessLogWriter:
    """Buffered, appending writer of one access-log file in one worker."""

    __slots__ = ("_failed", "_fd", "_loop", "_pending", "_pending_bytes", "_timer", "path")

    def __init__(self, path: str, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self._fd = fd
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False

    def write(self, line: bytes) -> None:
        """Queue one line (with its newline)."""
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= MAX_BUFFER:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL_S, self.flush)

    @property
    def pending(self) -> int:
        return self._pending_bytes

    def flush(self) -> None:
        """Write every queued line now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        data = memoryview(b"".join(self._pending))
        self._pending.clear()
        self._pending_bytes = 0
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.error("mongo_proxy access log %s: write failed (%s); dropping lines", self.path, exc)

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


_writers: dict[tuple[int, str], AccessLogWriter] = {}


def open_writer(path: str, loop: asyncio.AbstractEventLoop) -> AccessLogWriter | None:
    """The writer of ``path`` in this process (opened on first use); None if it cannot be opened."""
    key = (os.getpid(), path)
    writer = _writers.get(key)
    if writer is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.error("mongo_proxy access log %s cannot be opened (%s); logging disabled", path, exc)
            return None
        writer = _writers[key] = AccessLogWriter(path, fd, loop)
    return writer


def utc_time(wall: float) -> str:
    """``2026-01-31T12:00:00.123Z``."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LogEntry:
    """The request half of an access-log line, kept until its reply arrives."""

    __slots__ = ("fields", "wall")

    def __init__(self, fields: dict[str, object]) -> None:
        self.wall = time.time()
        self.fields = fields

    def line(self, reply: dict[str, object] | None) -> bytes:
        """The JSON line, with the reply's fields (all null when no reply came)."""
        record: dict[str, object] = {"time": utc_time(self.wall), **self.fields}
        record.update(reply if reply is not None else _NO_REPLY)
        return json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"


_NO_REPLY: Final[dict[str, object]] = {
    "reply_time_ms": None, "reply_size": None, "reply_docs": None, "ok": None, "error_code": None,
}


def query_json(document: dict[str, object]) -> object:
    """A command document for the ``query`` key: extended JSON, or its text cut to MAX_QUERY_CHARS."""
    from bson import json_util

    text = json_util.dumps(document, json_options=json_util.RELAXED_JSON_OPTIONS)
    if len(text) <= MAX_QUERY_CHARS:
        return json.loads(text)
    return text[:MAX_QUERY_CHARS] + "..."
