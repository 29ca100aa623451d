"""The two counting algorithms, as Redis script calls to make and replies to read (sans-IO).

Every meshproxy on every host that points at the same Redis shares the counters. The
decisions waiting in one worker go to Redis together as **one** script call (Redis runs
a script atomically, so each decision sees the ones before it), so a decision costs at
most one round trip, whatever its number of descriptors, and a burst of connections
costs one command, not one per connection. Scripts are called by SHA (EVALSHA).

**FIXED_WINDOW**: Lyft's algorithm, same keys and commands (``fixed_cache_impl.go``),
so meshproxy and Lyft's service can even share one Redis and count together. Per
descriptor with a limit::

    INCRBY <prefix><domain>_<k1>_<v1>_..._<kn>_<vn>_<window start> 1
    EXPIRE <same key> <unit seconds>

with ``window start = now // unit * unit`` (unix seconds, the host's clock, as Lyft).
Over the limit when the new count > ``requests_per_unit``; near it when the count >
floor(ratio * limit). Counts go up even for connections that are refused (Lyft does the
same). The weakness: a client can pass ``requests_per_unit`` at the end of one window and
as many again at the start of the next, twice the limit within moments
(envoyproxy/ratelimit#269).

**GCRA**: the generic cell rate algorithm (envoyproxy/ratelimit#1215 proposes it
upstream). Per key Redis keeps one number, the theoretical arrival time (TAT, µs). With
``T = unit / requests_per_unit`` (the emission interval) and a burst of ``B =
requests_per_unit`` (``tau = (B - 1) * T``), a connection at ``now`` conforms iff
``max(TAT, now) - now <= tau``, and then ``TAT = max(TAT, now) + T``. Time is Redis's
``TIME``, one clock for every host. What it guarantees: at most ``B`` at once, and in
**any** interval of length ``t`` at most ``B + t / T`` connections. There is no window
edge to burst across, so the double burst of fixed windows cannot happen: after a full
burst, the next connection waits ``T``. A refused decision changes no key (a refused
client does not dig itself deeper), and a decision is refused as a whole: if one of its
descriptors is over, none of its keys is updated. Near the limit when more than
floor(ratio * B) of the burst is in use. Keys end in ``_gcra`` and expire once their TAT
has passed.

Shadow-mode descriptors are evaluated the same way but never refuse: they only flag
``SHADOW_OVER_LIMIT``. ``unlimited`` descriptors and descriptors with no matching limit
cost nothing and send nothing. Several keys in one call need a single Redis, not a Redis
Cluster (keys in different slots).
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from filters.ratelimit.filter import NEAR_LIMIT, SHADOW_OVER_LIMIT, LimitStatus
from filters.redis_ratelimit.lyft_config import RateLimitRule


class Algorithm(enum.Enum):
    FIXED_WINDOW = 0
    GCRA = 1


@dataclass(frozen=True, slots=True)
class Limited:
    """One descriptor of a request that has a limit to count against."""

    rule: RateLimitRule
    key: str  # fixed window: the key without its window start; GCRA: the whole key


def key_base(prefix: str, domain: str, entries: Sequence[tuple[str, str]]) -> str:
    """Lyft's cache key up to the window start: ``<prefix><domain>_<k>_<v>_..._``."""
    return "".join((prefix, domain, "_", *(f"{k}_{v}_" for k, v in entries)))


def limited(rule: RateLimitRule, prefix: str, domain: str, entries: Sequence[tuple[str, str]],
            algorithm: Algorithm) -> Limited:
    base = key_base(prefix, domain, entries)
    return Limited(rule, base + "gcra" if algorithm is Algorithm.GCRA else base)


def combine(items: Sequence[Limited], over: Sequence[bool], used: Sequence[int],
            ratio: float) -> tuple[LimitStatus, int]:
    """One decision from its descriptors: refused if any enforced one is over (see module doc)."""
    status, flags, near = LimitStatus.OK, 0, False
    for item, is_over, count in zip(items, over, used, strict=True):
        if is_over:
            if item.rule.shadow_mode:
                flags |= SHADOW_OVER_LIMIT
            else:
                status = LimitStatus.OVER_LIMIT
        elif count > math.floor(item.rule.requests_per_unit * ratio):
            near = True
    if near and status is LimitStatus.OK:
        flags |= NEAR_LIMIT
    return status, flags


# ----- the scripts ---------------------------------------------------------------------------
# One script call per batch of decisions: Redis runs a script atomically, so every decision
# in it sees the ones before it, and the whole batch costs one command and one reply.

FIXED_WINDOW_SCRIPT: Final = """
-- meshproxy fixed window (Lyft's commands): KEYS = one key per counted descriptor,
-- ARGV = its expiry in seconds. Returns the new counts.
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('INCRBY', KEYS[i], 1)
  redis.call('EXPIRE', KEYS[i], ARGV[i])
end
return out
"""

GCRA_SCRIPT: Final = """
-- meshproxy GCRA: KEYS = one key per counted descriptor, decision after decision;
-- ARGV = 4 per key: T (us), tau (us), shadow (0/1), last of its decision (0/1).
-- Returns 2 integers per key: over (0/1), burst units in use.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, tats, first, deny = {}, {}, 1, false
for i = 1, #KEYS do
  local T, tau = tonumber(ARGV[4 * i - 3]), tonumber(ARGV[4 * i - 2])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  if tat - now > tau then
    out[2 * i - 1], out[2 * i], tats[i] = 1, math.ceil((tat - now) / T), false
    if ARGV[4 * i - 1] ~= '1' then deny = true end
  else
    out[2 * i - 1], out[2 * i], tats[i] = 0, math.ceil((tat + T - now) / T), tat + T
  end
  if ARGV[4 * i] == '1' then
    if not deny then
      for j = first, i do
        if tats[j] then
          redis.call('SET', KEYS[j], string.format('%d', tats[j]), 'PX', math.ceil((tats[j] - now) / 1000))
        end
      end
    end
    first, deny = i + 1, false
  end
end
return out
"""

SCRIPTS: Final = {Algorithm.FIXED_WINDOW: FIXED_WINDOW_SCRIPT, Algorithm.GCRA: GCRA_SCRIPT}
SHAS: Final = {algorithm: hashlib.sha1(script.encode()).hexdigest() for algorithm, script in SCRIPTS.items()}


def gcra_parameters(rule: RateLimitRule) -> tuple[int, int]:
    """(T, tau) in µs: burst B = requests_per_unit. A limit of 0 gets tau = -1: never conforms."""
    assert rule.unit is not None
    unit_us = rule.unit.value * 1_000_000
    if rule.requests_per_unit == 0:
        return unit_us, -1
    emission = max(1, round(unit_us / rule.requests_per_unit))
    return emission, (rule.requests_per_unit - 1) * emission


def script_arguments(algorithm: Algorithm, decisions: Sequence[Sequence[Limited]],
                     now: int) -> tuple[list[str], list[int]]:
    """KEYS and ARGV of one script call for a batch of decisions (``now``: unix seconds)."""
    keys: list[str] = []
    args: list[int] = []
    for items in decisions:
        last = len(items) - 1
        for i, item in enumerate(items):
            unit = item.rule.unit
            assert unit is not None  # unlimited rules are never counted
            if algorithm is Algorithm.GCRA:
                keys.append(item.key)
                args += (*gcra_parameters(item.rule), int(item.rule.shadow_mode), int(i == last))
            else:
                divider = unit.value
                keys.append(f"{item.key}{now // divider * divider}")
                args.append(divider)
    return keys, args


def decide(algorithm: Algorithm, decisions: Sequence[Sequence[Limited]], reply: object,
           ratio: float) -> list[tuple[LimitStatus, int]]:
    """Every decision of a batch from the script's reply (ValueError on a malformed reply)."""
    per_key = 2 if algorithm is Algorithm.GCRA else 1
    expected = per_key * sum(len(items) for items in decisions)
    if not isinstance(reply, list) or len(reply) != expected or not all(isinstance(v, int) for v in reply):
        raise ValueError(f"expected {expected} integers from the script, got {reply!r:.200}")
    out, pos = [], 0
    for items in decisions:
        n = len(items)
        if algorithm is Algorithm.GCRA:
            own = reply[pos:pos + 2 * n]
            over, used = [bool(v) for v in own[0::2]], own[1::2]
        else:
            used = reply[pos:pos + n]
            over = [count > item.rule.requests_per_unit for item, count in zip(items, used, strict=True)]
        pos += per_key * n
        out.append(combine(items, over, used, ratio))
    return out
