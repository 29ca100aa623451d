"""The main process's side of stats: the segment, the stats matcher, areas for processes.

The main process creates (restart epoch 0) or attaches to (a hot-restart generation)
the shared-memory segment of its ``--base-id``, claims one area for itself and one for
each worker *before* forking it, and releases (folds) a worker's area once the worker
has been reaped. See docs/stats.md for the segment's design.

``stats_config.stats_matcher`` becomes the segment's ``accept`` predicate: rejected
names are never stored (Envoy's semantics). Internal names (``_host.*``, used for the
per-host figures of ``/clusters``) are always accepted.

If /dev/shm is too small for the default budgets, smaller budgets are tried; the
fallback is logged, never silent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from meshproxy.config.model import Bootstrap, StatsMatcher, StringMatcher
from stats_shm import Segment, Snapshot, StatsSegmentError, StatsStore

log = logging.getLogger("meshproxy.stats")

# (slot_budget, histogram_budget, areas): the defaults first, then smaller fallbacks
# for a small /dev/shm (e.g. Docker's 64 MiB default).
BUDGETS: tuple[tuple[int, int, int], ...] = ((16384, 1024, 64), (8192, 256, 16), (2048, 64, 8))


def _string_matcher(m: StringMatcher) -> Callable[[str], bool]:
    flags = re.IGNORECASE if m.ignore_case else 0
    if m.safe_regex is not None:
        rx = re.compile(m.safe_regex, flags)
        return lambda name: rx.fullmatch(name) is not None
    if m.ignore_case:
        fold = str.lower
    else:
        def fold(s: str) -> str:
            return s
    if m.exact is not None:
        exact = fold(m.exact)
        return lambda name: fold(name) == exact
    if m.prefix is not None:
        prefix = fold(m.prefix)
        return lambda name: fold(name).startswith(prefix)
    if m.suffix is not None:
        suffix = fold(m.suffix)
        return lambda name: fold(name).endswith(suffix)
    contains = fold(m.contains or "")
    return lambda name: contains in fold(name)


def matcher_predicate(matcher: StatsMatcher | None) -> Callable[[str], bool] | None:
    """``stats_matcher`` -> accept(name), or None when everything is accepted."""
    if matcher is None:
        return None
    if matcher.reject_all:
        return lambda name: name.startswith("_")
    if matcher.inclusion_list is not None:
        tests = [_string_matcher(m) for m in matcher.inclusion_list]
        return lambda name: name.startswith("_") or any(t(name) for t in tests)
    if matcher.exclusion_list is not None:
        tests = [_string_matcher(m) for m in matcher.exclusion_list]
        return lambda name: name.startswith("_") or not any(t(name) for t in tests)
    return None


class StatsBackend:
    """The segment as the main process uses it."""

    def __init__(self, bootstrap: Bootstrap, base_id: int, *, attach: bool = False) -> None:
        self.base_id = base_id
        accept = matcher_predicate(bootstrap.stats_config.stats_matcher)
        self.segment = Segment.attach(base_id, accept=accept) if attach else self._create(base_id, accept)
        self.main_area = self.segment.claim_area()
        self.store: StatsStore = self.segment.store(self.main_area)

    @staticmethod
    def _create(base_id: int, accept: Callable[[str], bool] | None) -> Segment:
        for i, (slots, histograms, areas) in enumerate(BUDGETS):
            try:
                segment = Segment.create(base_id, slot_budget=slots, histogram_budget=histograms,
                                         areas=areas, accept=accept)
            except StatsSegmentError as exc:
                if i == len(BUDGETS) - 1:
                    raise
                log.warning("%s; trying smaller stat budgets", exc)
                continue
            if i:
                log.warning("stats segment created with reduced budgets: %d stats, %d histograms, "
                            "%d processes", slots, histograms, areas)
            return segment
        raise AssertionError("unreachable")

    def claim_area(self) -> int:
        return self.segment.claim_area()

    def store_factory(self, area: int) -> Callable[[], StatsStore]:
        """What a forked worker calls to get the store writing its area."""
        segment = self.segment
        return lambda: segment.store(area)

    def release_area(self, area: int) -> None:
        self.segment.release_area(area)

    def snapshot(self) -> Snapshot:
        return self.segment.snapshot()

    def close(self, unlink: bool) -> None:
        """At a clean stop: release our own area, and remove the segment if no one follows us."""
        self.segment.release_area(self.main_area)
        if unlink:
            self.segment.unlink()
        self.segment.close()
