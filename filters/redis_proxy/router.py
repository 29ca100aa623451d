"""Key -> cluster routing of redis_proxy: Envoy's ``prefix_routes`` (envoy-subset.md §5.2).

The route whose prefix is the **longest** match of the key wins (prefixes are unique, checked at
config load); with ``case_insensitive`` the key is compared lowercased. ``remove_prefix`` strips
the matched prefix from the key before it is hashed and sent, as Envoy's router does. No match
goes to ``catch_all_route``; no catch-all either means ``no upstream host``.

A route resolves to a ``ClusterPool`` (one per cluster and worker), which then picks the host by
the cluster's consistent hash of the (stripped) key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filters.redis_proxy.config import RedisProxyConfig
    from filters.redis_proxy.pool import ClusterPool


class Router:
    """Routes keys of one redis_proxy config to the pools of one worker."""

    __slots__ = ("_routes", "case_insensitive", "catch_all", "only")

    def __init__(self, config: RedisProxyConfig, pools: dict[str, ClusterPool]) -> None:
        self.case_insensitive = config.case_insensitive
        self.catch_all = pools[config.catch_all_route.cluster] if config.catch_all_route is not None else None
        routes = []
        for route in config.routes:
            prefix = route.prefix.encode()
            if self.case_insensitive:
                prefix = prefix.lower()
            routes.append((prefix, pools[route.cluster], len(prefix) if route.remove_prefix else 0))
        routes.sort(key=lambda r: len(r[0]), reverse=True)  # the first match is the longest
        self._routes = tuple(routes)
        #: The one pool every key goes to when there are no prefix routes (the fast path).
        self.only = self.catch_all if not routes else None

    def route(self, key: bytes) -> tuple[ClusterPool, bytes] | None:
        """The pool for ``key`` and the key to send (prefix removed if the route says so)."""
        if self._routes:
            match = key.lower() if self.case_insensitive else key
            for prefix, pool, strip in self._routes:
                if match.startswith(prefix):
                    return pool, (key[strip:] if strip else key)
        if self.catch_all is not None:
            return self.catch_all, key
        return None

    def pools(self) -> list[ClusterPool]:
        """Every pool this config can route to, once each: the catch-all first, then by route."""
        pools = [] if self.catch_all is None else [self.catch_all]
        for _prefix, pool, _strip in sorted(self._routes, key=lambda r: r[0]):
            if pool not in pools:
                pools.append(pool)
        return pools
