"""A circuit breaker on the limiter's backend, so a Redis outage costs no time per decision.

Without one, every decision during an outage waits for the full timeout before failing
open or closed (envoyproxy/ratelimit#462: 1 to 10 s added per request). States:

* CLOSED: every decision asks Redis. ``failure_threshold`` failures in a row (errors or
  timeouts of whole round trips) open the breaker.
* OPEN: decisions fail at once, without asking (the filter then applies
  ``failure_mode_deny``), for ``open_duration``.
* HALF_OPEN: after that, one decision is let through as a probe; its success closes the
  breaker, its failure opens it again. A probe that never reports back (its connection
  closed before the round trip) is replaced after another ``open_duration``.

One breaker per worker, driven by the worker's loop clock; it never sleeps or schedules.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(self, failure_threshold: int, open_duration: float, clock: Callable[[], float]) -> None:
        self.failure_threshold = failure_threshold
        self.open_duration = open_duration
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._until = 0.0  # OPEN: when to try a probe; HALF_OPEN: when to give up on the probe

    def allow(self) -> bool:
        """May this decision ask the backend?"""
        if self.state is BreakerState.CLOSED:
            return True
        now = self.clock()
        if now < self._until:
            return False
        self.state = BreakerState.HALF_OPEN  # this caller is the probe
        self._until = now + self.open_duration
        return True

    def record_success(self) -> None:
        self.failures = 0
        self.state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self._until = self.clock() + self.open_duration
