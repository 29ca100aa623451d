"""The admin endpoints: each reads or changes the main process through ``AdminContext``.

Bodies and status codes follow Envoy's admin (envoy-subset.md §8): mutating endpoints
answer ``OK\\n``; ``/ready`` answers ``LIVE\\n`` with 200 or the state name with 503;
JSON endpoints are pretty-printed with ``content-type: application/json``. Stats
endpoints take a fresh snapshot per request; ``AdminStatsState`` adds the flush
interval and the ``/reset_counters`` baseline.
"""

from __future__ import annotations

import json

from meshproxy.admin.context import AdminContext, ServerState
from meshproxy.admin.http import Request, Response
from meshproxy.admin.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from meshproxy.admin.prometheus import render_prometheus
from meshproxy.admin.render_clusters import (
    render_clusters_json,
    render_clusters_text,
    render_listeners_json,
    render_listeners_text,
)
from meshproxy.admin.render_json import render_json
from meshproxy.admin.render_text import render_text
from meshproxy.admin.routes import Route
from meshproxy.admin.stats_view import AdminStatsState, ParamError, StatsFormat, StatsParams
from meshproxy.admin.tags import TagProducer, default_producer

JSON = "application/json"
OK = b"OK\n"

STATS_PARAMS = (
    ("usedonly", "Only include stats that have been written since the segment was created"),
    ("filter", "Regular expression matched anywhere in the stat name (URL-encode it)"),
    ("format", "Format to use (text, json, prometheus)"),
    ("type", "Stat types to include (All, Counters, Gauges, Histograms)"),
    ("pretty", "Pretty-print JSON output"),
)
PROMETHEUS_PARAMS = STATS_PARAMS[:2]
FORMAT_PARAM = (("format", "Format to use (text, json)"),)


def _json(data: object, status: int = 200) -> Response:
    return Response(status, (json.dumps(data, indent=2) + "\n").encode(), JSON)


class AdminHandlers:
    """Handlers bound to one context and one admin stats state."""

    def __init__(self, context: AdminContext, stats: AdminStatsState,
                 producer: TagProducer | None = None) -> None:
        self.context = context
        self.state = stats
        self.producer = producer or default_producer()

    def routes(self) -> list[Route]:
        return [
            Route("/stats", "print server stats", self.stats, params=STATS_PARAMS),
            Route("/stats/prometheus", "print server stats in prometheus format", self.stats_prometheus,
                  params=PROMETHEUS_PARAMS),
            Route("/server_info", "print server version/status information", self.server_info),
            Route("/ready", "print server state, return 200 if LIVE, otherwise return 503", self.ready),
            Route("/clusters", "upstream cluster status", self.clusters, params=FORMAT_PARAM),
            Route("/listeners", "print listener info", self.listeners, params=FORMAT_PARAM),
            Route("/config_dump", "dump the current configuration", self.config_dump),
            Route("/hot_restart_version", "print the hot restart compatibility version",
                  self.hot_restart_version),
            Route("/healthcheck/fail", "cause the server to fail health checks", self.healthcheck_fail,
                  mutates=True),
            Route("/healthcheck/ok", "cause the server to pass health checks", self.healthcheck_ok,
                  mutates=True),
            Route("/reset_counters", "reset all counters to zero (admin output only; sinks unaffected)",
                  self.reset_counters, mutates=True),
            Route("/drain_listeners", "drain listeners", self.drain_listeners, mutates=True, params=(
                ("graceful", "Drain gracefully (for --drain-time-s) before closing the listeners"),
                ("inboundonly", "Only drain listeners with traffic_direction INBOUND"),
            )),
            Route("/quitquitquit", "exit the server", self.quitquitquit, mutates=True),
        ]

    # ----- stats --------------------------------------------------------------------------

    def stats(self, request: Request) -> Response:
        return self._stats(request, StatsFormat.TEXT)

    def stats_prometheus(self, request: Request) -> Response:
        query = dict(request.query)
        query.pop("format", None)
        return self._stats(Request(request.method, request.path, query), StatsFormat.PROMETHEUS)

    def _stats(self, request: Request, default_format: StatsFormat) -> Response:
        try:
            params = StatsParams.parse(request.query, default_format)
        except ParamError as exc:
            return Response(400, str(exc).encode())
        selection = self.state.select(self.context.snapshot(), params)
        if params.format is StatsFormat.JSON:
            return Response(200, render_json(selection, params.pretty).encode(), JSON)
        if params.format is StatsFormat.PROMETHEUS:
            body = render_prometheus(selection, self.producer).encode()
            return Response(200, body, PROMETHEUS_CONTENT_TYPE)
        return Response(200, render_text(selection).encode())

    def reset_counters(self, request: Request) -> Response:
        self.state.reset_counters(self.context.snapshot())
        return Response(200, OK)

    # ----- server -------------------------------------------------------------------------

    def server_info(self, request: Request) -> Response:
        return _json(self.context.server_info())

    def ready(self, request: Request) -> Response:
        state = str(self.context.server_info().get("state", ServerState.LIVE.value))
        return Response(200 if state == ServerState.LIVE.value else 503, f"{state}\n".encode())

    def hot_restart_version(self, request: Request) -> Response:
        return Response(200, self.context.hot_restart_version().encode())

    def config_dump(self, request: Request) -> Response:
        return _json(self.context.config_dump())

    def clusters(self, request: Request) -> Response:
        clusters = self.context.clusters()
        if request.query.get("format") == "json":
            return Response(200, render_clusters_json(clusters).encode(), JSON)
        return Response(200, render_clusters_text(clusters).encode())

    def listeners(self, request: Request) -> Response:
        listeners = self.context.listeners()
        if request.query.get("format") == "json":
            return Response(200, render_listeners_json(listeners).encode(), JSON)
        return Response(200, render_listeners_text(listeners).encode())

    # ----- state changes (POST only; the router enforces it) ---------------------------------

    def healthcheck_fail(self, request: Request) -> Response:
        self.context.healthcheck_fail()
        return Response(200, OK)

    def healthcheck_ok(self, request: Request) -> Response:
        self.context.healthcheck_ok()
        return Response(200, OK)

    def drain_listeners(self, request: Request) -> Response:
        self.context.drain_listeners(graceful="graceful" in request.query,
                                     inbound_only="inboundonly" in request.query)
        return Response(200, OK)

    def quitquitquit(self, request: Request) -> Response:
        # The context quits after the answer is written, so the client sees "OK".
        return Response(200, OK, after=self.context.quit, close=True)
