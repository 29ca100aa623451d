"""The main process's side of stats: creates the shared-memory segment, hands areas to workers.

TEMPORARY: until stats_shm lands, workers count into per-process heap stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshproxy.config.model import Bootstrap


class _Handle:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def dec(self, n: int = 1) -> None:
        self.value -= n

    def set(self, v: int) -> None:
        self.value = v

    def record(self, v: float) -> None:
        self.value += 1


class _TempStore:
    def __init__(self) -> None:
        self.stats: dict[str, _Handle] = {}

    def _get(self, name: str) -> _Handle:
        return self.stats.setdefault(name, _Handle())

    counter = gauge = histogram = _get


class StatsBackend:
    def __init__(self, bootstrap: Bootstrap, base_id: int) -> None:
        self.bootstrap = bootstrap
        self.base_id = base_id

    def worker_store_factory(self, index: int) -> Callable[[], Any]:
        return _TempStore
