"""Logging in Envoy's default format: ``[%Y-%m-%d %T.%e][pid][level][logger] message``."""

from __future__ import annotations

import logging
import os
import sys
import time

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}


class EnvoyFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = record.levelname.lower().replace("warning", "warning")
        name = record.name.removeprefix("meshproxy.")
        text = f"[{stamp}.{int(record.msecs):03d}][{os.getpid()}][{level}][{name}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str, path: str | None = None) -> None:
    """Configure the root logger once, to stderr or to ``path``."""
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(EnvoyFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])


def reopen_logs() -> None:
    """SIGUSR1 (logrotate): reopen file handlers so a rotated log file is let go."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
