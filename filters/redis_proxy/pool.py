"""The per-worker pools of redis_proxy: which upstream serves a key, and pooled transaction links.

Each worker process keeps one ``ClusterPool`` per (cluster, connection-pool settings, RESP
protocol), shared by every redis_proxy filter of the worker with those settings (``WorkerState``).
A pool holds one pipelined ``RedisUpstream`` per host (``upstream.py``), so upstream connections
= workers x hosts (x protocols in use) per proxy instance, the formula Envoy's per-thread pools
follow too (user-asks F40).

Key -> host is the cluster's consistent hash: ``redis_key_hash`` (murmur2 of the key, or of its
``{hashtag}``) picked by the cluster's RING_HASH or MAGLEV table (``workers.cluster``,
``filters.hashing``, bit-exact with Envoy), so a key lands on the same host from every worker and
every proxy instance with the same hosts. A bounded cache of recent keys saves the hashing
(murmur2 is pure Python, 1-2 us a key): two generations of ``CACHE_SIZE`` keys, so a working set
of up to ``CACHE_SIZE`` keys is never hashed twice and redis-benchmark's ``-r 100000`` fits
(with 64k a generation, a fifth of its keys missed). It is dropped whenever the cluster's host
set (its load balancer object) changes, and the upstreams of hosts that left are closed,
failing what they held.

Transactions use dedicated connections (``dedicated``/``release``): after EXEC or DISCARD one is
kept idle (at most ``MAX_IDLE_DEDICATED`` per host) for the next transaction.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from filters.redis_proxy.resp import encode_command
from filters.redis_proxy.upstream import Flusher, RedisUpstream

if TYPE_CHECKING:
    import asyncio

    from filters.redis_proxy.config import ConnPoolSettings, RedisProtocolOptions
    from filters.redis_proxy.stats import RedisClusterStats

#: Idle dedicated (transaction) connections kept per host for the next transaction.
MAX_IDLE_DEDICATED = 4


class ClusterPool:
    """One worker's upstreams for one cluster and one set of pool settings.

    ``for_key`` maps a key to its host's upstream through the cluster's consistent hash
    (``redis_key_hash``: murmur2 of the key or its ``{hashtag}``, then RING_HASH / MAGLEV in
    ``workers.cluster``), with a bounded cache of recent keys, dropped whenever the cluster's
    host set (its load balancer object) changes.
    """

    #: Keys per generation (at most twice this many held: about 100 bytes each, plus the key).
    CACHE_SIZE = 131072
    CACHE_KEY_MAX = 128

    def __init__(self, worker: Any, cluster: Any, settings: ConnPoolSettings, options: RedisProtocolOptions,
                 flusher: Flusher, redis_stats: RedisClusterStats,
                 key_hash: Callable[[bytes], int], protocol: int = 2) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop = worker.loop
        self.cluster = cluster
        self.settings = settings
        self.flusher = flusher
        self.batch_size = settings.max_buffer_size_before_flush
        self.cluster_stats = cluster.stats
        self.redis_stats = redis_stats
        self.key_hash = key_hash
        self.protocol = protocol
        self.handshake = handshake_frame(options, protocol)
        self.handshake_failed_logged = False
        self.upstreams: dict[Any, RedisUpstream] = {}
        self.idle: dict[Any, list[RedisUpstream]] = {}
        self.unknown: dict[tuple[str, int], RedisUpstream] = {}  # redirection targets outside the cluster
        self._cache: dict[bytes, RedisUpstream] = {}  # the young generation of the key cache
        self._old: dict[bytes, RedisUpstream] = {}
        self._lb: Any = None
        self._sole: RedisUpstream | None = None
        self._refresh()

    def _refresh(self) -> None:
        """The host set changed: drop the key cache and the upstreams of hosts that left."""
        self._lb = self.cluster.lb
        self._cache = {}
        self._old = {}
        hosts = self.cluster.hosts
        self._sole = self.upstream(hosts[0]) if len(hosts) == 1 else None
        live = set(hosts)
        for host in [h for h in self.upstreams if h not in live]:
            self.upstreams.pop(host).close()
        for host in [h for h in self.idle if h not in live]:
            for up in self.idle.pop(host):
                up.close()

    def host_for_key(self, key: bytes) -> Any:
        """The host that owns ``key`` (None: no host)."""
        if self.cluster.lb is not self._lb:
            self._refresh()
        return self.cluster.choose_host(self.key_hash(key))

    def for_key(self, key: bytes) -> RedisUpstream | None:
        """The shared upstream of the host that owns ``key`` (None: no host).

        The key cache has two generations of ``CACHE_SIZE`` keys: new keys go to the young one;
        when it is full it becomes the old one and the previous old one is dropped; a key found
        in the old one moves back to the young one. Recently used keys stay, at most
        2 x ``CACHE_SIZE`` are held, and nothing is scanned or evicted one by one.
        """
        if self.cluster.lb is not self._lb:
            self._refresh()
        cache = self._cache
        up = cache.get(key)
        if up is not None:
            return up
        up = self._old.get(key)
        if up is None:
            host = self.cluster.choose_host(self.key_hash(key))
            if host is None:
                return None
            up = self.upstream(host)
            if len(key) > self.CACHE_KEY_MAX:
                return up
        if len(cache) >= self.CACHE_SIZE:
            self._old = cache
            cache = self._cache = {}
        cache[key] = up
        return up

    def key_cache(self) -> Callable[[bytes], RedisUpstream | None]:
        """The ``get`` of the young key cache, after checking the host set: for a caller that
        looks up many keys at once (one read's commands) and calls ``for_key`` on a miss.
        Valid until the caller returns to the event loop."""
        if self.cluster.lb is not self._lb:
            self._refresh()
        return self._cache.get

    def sole_upstream(self) -> RedisUpstream | None:
        """The upstream of a one-host cluster, which holds every key (None: 0 or several hosts)."""
        if self.cluster.lb is not self._lb:
            self._refresh()
        return self._sole

    def upstream(self, host: Any) -> RedisUpstream:
        up = self.upstreams.get(host)
        if up is None:
            up = self.upstreams[host] = RedisUpstream(self, host)
        return up

    def hosts(self) -> list[Any]:
        """The current hosts in a stable order (by ``ip:port``), as SCAN walks them."""
        if self.cluster.lb is not self._lb:
            self._refresh()
        return sorted(self.cluster.hosts, key=lambda h: (h.address, h.port))

    # ----- dedicated connections (transactions) ----------------------------------------------------

    def dedicated(self, host: Any) -> RedisUpstream:
        idle = self.idle.get(host)
        while idle:
            up = idle.pop()
            if not up.dead:
                up.releasing = False
                return up
        return RedisUpstream(self, host, dedicated=True)

    def release(self, up: RedisUpstream) -> None:
        """A transaction ended: keep its connection for the next one once its replies are in."""
        if up.dead:
            return
        if up.pending:
            up.releasing = True
        else:
            self.put_idle(up)

    def put_idle(self, up: RedisUpstream) -> None:
        up.releasing = False
        idle = self.idle.setdefault(up.host, [])
        if up.conn is None or len(idle) >= MAX_IDLE_DEDICATED or up.host not in self.cluster.hosts:
            up.close()
        else:
            idle.append(up)

    def forget_idle(self, up: RedisUpstream) -> None:
        idle = self.idle.get(up.host)
        if idle and up in idle:
            idle.remove(up)


def handshake_frame(options: RedisProtocolOptions, protocol: int) -> bytes:
    """What a new connection sends first: ``HELLO 3 [AUTH ...]`` for RESP3, else ``AUTH`` if any."""
    password = options.auth_password
    if protocol == 3:
        auth = (b"AUTH", options.auth_username or b"default", password) if password else ()
        return encode_command((b"HELLO", b"3", *auth))
    if password:
        user = (options.auth_username,) if options.auth_username else ()
        return encode_command((b"AUTH", *user, password))
    return b""


class WorkerState:
    """Per worker: the flusher and the pools, shared by every redis_proxy filter of the worker."""

    def __init__(self, worker: Any) -> None:
        self.flusher = Flusher(worker.loop)
        self.pools: dict[tuple[str, ConnPoolSettings, int], ClusterPool] = {}


_states: weakref.WeakKeyDictionary[Any, WorkerState] = weakref.WeakKeyDictionary()


def worker_state(worker: Any) -> WorkerState:
    state = _states.get(worker)
    if state is None:
        state = _states[worker] = WorkerState(worker)
    return state
