"""The Redis-backed limiter: a ``LimitClient`` that decides with one round trip to Redis.

One per worker (per filter config), running on the worker's loop with ``redis.asyncio``
(the maintained home of aioredis). Its connections speak RESP2 (no HELLO on connect);
the first is opened when the worker starts (loading the script), after the fork.

Per decision (a new connection):

1. Each descriptor is matched against the Lyft-format limits (static descriptors once
   per worker). No limit, or ``unlimited``: nothing to count. A decision with nothing to
   count is OK at once, with no round trip.
2. While the backend's circuit breaker is open (breaker.py), the decision is an ERROR at
   once (``circuit_open``++): an outage costs no waiting per connection.
3. Otherwise it gets its own timer (the filter's ``timeout``, 20 ms by default) and joins
   the queue. A ``call_soon`` callback sends everything queued (up to ``MAX_BATCH``) as
   one script call (algorithms.py), so a burst of connections costs one command and one
   round trip, never more than one per decision. At most ``pool_size`` calls are in
   flight; decisions arriving meanwhile wait in the queue and go with the next one.
4. The timer answers ERROR if Redis has not (the filter then fails open or closed) and
   counts a failure against the breaker; a call that fails counts one; one that answers
   some decision in time counts a success. A late answer is dropped, but its call is not
   cancelled: cancelling would drop the connection and make the next decisions pay a
   reconnect. A call still unanswered after ``10 * timeout`` (at least 1 s) is cancelled,
   which drops its connection: a hung Redis cannot keep them all.

The script is loaded when the worker starts (which also opens the first connection) and
called by SHA; a NOSCRIPT reply (Redis restarted or flushed) is answered by sending the
script itself once (EVAL), within the same decision. A decision cancelled by its
connection closing is dropped from the queue, or its answer ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from filters.ratelimit.descriptors import Descriptors
from filters.ratelimit.filter import Done, LimitStatus
from filters.redis_ratelimit.algorithms import SCRIPTS, SHAS, Limited, decide, limited, script_arguments
from filters.redis_ratelimit.breaker import CircuitBreaker
from filters.redis_ratelimit.config import RedisRateLimitConfig
from filters.redis_ratelimit.stats import RedisRateLimitStats

log = logging.getLogger("meshproxy.redis_ratelimit")

# Decisions per script call: bounds how long one call keeps Redis busy (a script blocks it).
MAX_BATCH = 500


class Decision:
    """One pending decision; ``cancel()`` is the filter's handle on it."""

    __slots__ = ("done", "items", "limiter", "timer")

    def __init__(self, items: Sequence[Limited], done: Done, limiter: RedisLimiter) -> None:
        self.items = items
        self.done: Done | None = done
        self.limiter = limiter
        self.timer: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.done = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def finish(self, status: LimitStatus, flags: int = 0) -> bool:
        """Report the answer; False if the decision was already answered or cancelled."""
        done = self.done
        if done is None:
            return False
        self.cancel()
        done(status, flags)
        return True

    def expire(self) -> None:
        self.timer = None
        if self.finish(LimitStatus.ERROR):
            self.limiter.on_timeout()


class RedisLimiter:
    """A ``LimitClient`` (filters.ratelimit.filter) over Redis; see the module docstring."""

    def __init__(self, config: RedisRateLimitConfig, loop: asyncio.AbstractEventLoop,
                 stats: RedisRateLimitStats, client: Any | None = None) -> None:
        self.config = config
        self.loop = loop
        self.stats = stats
        self.algorithm = config.algorithm
        self.script, self.sha = SCRIPTS[config.algorithm], SHAS[config.algorithm]
        self.ratio = config.near_limit_ratio
        self.timeout = config.timeout
        breaker = config.circuit_breaker
        self.breaker = CircuitBreaker(breaker.failure_threshold, breaker.open_duration, loop.time)
        # Late answers are not cancelled (that would drop the connection and make the next
        # decisions pay a reconnect), but a call still unanswered after this long is: a hung
        # Redis must not keep the connections forever. One timer per call, not redis-py's
        # socket_timeout, which wraps every read in a wait_for (a task each).
        self.give_up = max(1.0, 10 * config.timeout)
        self.redis = client if client is not None else aioredis.Redis.from_url(
            config.redis_url, max_connections=config.pool_size, retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self.give_up, protocol=2)  # RESP2: no HELLO on connect
        self.in_flight = 0
        self._queue: list[Decision] = []
        self._flush_scheduled = False
        self._last_descriptors: Descriptors | None = None
        self._last_plan: tuple[Limited, ...] = ()

    def start(self) -> None:
        """Open a first connection and load the script, before the first decision needs them."""
        self.in_flight += 1
        task = self.loop.create_task(self._load_script())
        give_up = self.loop.call_later(self.give_up, task.cancel)
        task.add_done_callback(lambda t: self._warmed_up(t, give_up))

    async def _load_script(self) -> Any:
        return await self.redis.script_load(self.script)

    def _warmed_up(self, task: asyncio.Task[Any], give_up: asyncio.TimerHandle) -> None:
        give_up.cancel()
        self.in_flight -= 1
        if (task.cancelled() or task.exception() is not None) and log.isEnabledFor(logging.DEBUG):
            log.debug("redis warm-up failed: %s", task.exception() if not task.cancelled() else "-")
        self._schedule_flush()

    # ----- planning ---------------------------------------------------------------------

    def plan(self, descriptors: Descriptors) -> tuple[Limited, ...]:
        """The descriptors of one decision that have a limit to count against."""
        if descriptors is self._last_descriptors:  # static descriptors: the same tuple every time
            return self._last_plan
        cfg = self.config
        items = []
        for entries in descriptors:
            rule = cfg.limits.find(entries)
            if rule is not None and not rule.unlimited:
                items.append(limited(rule, cfg.key_prefix, cfg.domain, entries, cfg.algorithm))
        plan = tuple(items)
        self._last_descriptors, self._last_plan = descriptors, plan
        return plan

    # ----- LimitClient ----------------------------------------------------------------------

    def limit(self, descriptors: Descriptors, done: Done) -> Decision | None:
        items = self.plan(descriptors)
        if not items:
            done(LimitStatus.OK, 0)
            return None
        if not self.breaker.allow():
            self.stats.circuit_open.inc()
            done(LimitStatus.ERROR, 0)
            return None
        decision = Decision(items, done, self)
        decision.timer = self.loop.call_later(self.timeout, decision.expire)
        self._queue.append(decision)
        self._schedule_flush()
        return decision

    def on_timeout(self) -> None:
        """A decision got no answer in time: Redis is down, hung or not keeping up."""
        self.breaker.record_failure()

    def _schedule_flush(self) -> None:
        if self._queue and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    # ----- batches ------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send the decisions waiting, as one script call, unless every connection is busy."""
        self._flush_scheduled = False
        if self.in_flight >= self.config.pool_size:
            return  # sent when a round trip ends; the decisions' own timers still run
        queue = [d for d in self._queue if d.done is not None]
        batch, self._queue = queue[:MAX_BATCH], queue[MAX_BATCH:]
        self._schedule_flush()
        if not batch:
            return
        keys, args = script_arguments(self.algorithm, [d.items for d in batch], int(time.time()))
        self.in_flight += 1
        task = self.loop.create_task(self._call(keys, args))
        give_up = self.loop.call_later(self.give_up, task.cancel)
        task.add_done_callback(lambda t: self._batch_done(t, batch, give_up))

    async def _call(self, keys: list[str], args: list[int]) -> Any:
        try:
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted or was flushed: one EVAL loads the script again
            return await self.redis.eval(self.script, len(keys), *keys, *args)

    def _batch_done(self, task: asyncio.Task[Any], batch: list[Decision],
                    give_up: asyncio.TimerHandle) -> None:
        give_up.cancel()
        self.in_flight -= 1
        self._schedule_flush()
        results = None
        if not task.cancelled() and task.exception() is None:
            try:
                results = decide(self.algorithm, [d.items for d in batch], task.result(), self.ratio)
            except ValueError as exc:
                log.warning("unexpected reply from redis: %s", exc)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("redis round trip failed: %s", task.exception() if not task.cancelled() else "-")
        if results is None:
            if any([d.finish(LimitStatus.ERROR) for d in batch]):
                self.breaker.record_failure()
            return
        answered = False
        for decision, (status, flags) in zip(batch, results, strict=True):
            answered |= decision.finish(status, flags)
        if answered:  # in time for at least one decision
            self.breaker.record_success()

    async def close(self) -> None:
        """Close the Redis connections (tests and tools; a worker just exits)."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()
