"""The admin endpoint: Envoy's ``/stats``, ``/clusters``, ``/ready``, … on a small HTTP server.

The main process implements ``AdminContext`` (context.py) and runs an ``AdminServer``
(server.py). Modules, each with one job:

* ``context``         the ``AdminContext`` protocol and the ``/clusters`` dataclasses
* ``http``            HTTP/1.1 on ``asyncio.Protocol`` + httptools, with every input bounded
* ``routes``          path → handler, the POST rule, ``/help`` and the ``/`` page
* ``handlers``        the endpoints
* ``stats_view``      ``/stats`` parameters, selection, flush interval, reset baseline
* ``render_text``, ``render_json``, ``prometheus``, ``render_clusters``   output formats
* ``tags``            Envoy's default tag extractors (for Prometheus)

See docs/admin.md.
"""

from __future__ import annotations

from meshproxy.admin.context import (
    HOST_COUNTERS,
    HOST_GAUGES,
    HOST_STAT_PREFIX,
    AdminContext,
    CircuitBreakerThresholds,
    ClusterInfo,
    HostInfo,
    ServerState,
    host_stat_name,
    host_stats,
)
from meshproxy.admin.http import Limits
from meshproxy.admin.server import AdminServer

__all__ = [
    "HOST_COUNTERS",
    "HOST_GAUGES",
    "HOST_STAT_PREFIX",
    "AdminContext",
    "AdminServer",
    "CircuitBreakerThresholds",
    "ClusterInfo",
    "HostInfo",
    "Limits",
    "ServerState",
    "host_stat_name",
    "host_stats",
]
