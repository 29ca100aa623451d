"""Every admin endpoint through the router (no sockets): bodies, codes, the POST rule, 404."""

from __future__ import annotations

import json

import pytest
from admin_fakes import FakeContext

from meshproxy.admin import ServerState
from meshproxy.admin.handlers import AdminHandlers
from meshproxy.admin.http import Request, Response, parse_target
from meshproxy.admin.routes import Router
from meshproxy.admin.stats_view import AdminStatsState

MUTATING = ["/healthcheck/fail", "/healthcheck/ok", "/reset_counters", "/drain_listeners", "/quitquitquit"]
READ_ONLY = ["/", "/help", "/stats", "/stats/prometheus", "/server_info", "/ready", "/clusters", "/listeners",
             "/config_dump", "/hot_restart_version"]


@pytest.fixture
def ctx() -> FakeContext:
    return FakeContext()


@pytest.fixture
def router(ctx: FakeContext) -> Router:
    return Router(AdminHandlers(ctx, AdminStatsState()).routes())


def call(router: Router, target: str, method: str = "GET") -> Response:
    path, query = parse_target(target)
    return router(Request(method, path, query))


def test_parse_target_decodes_percent_but_keeps_plus() -> None:
    assert parse_target("/stats?filter=rq_%5Cd%2B%24&usedonly&x=1&x=2") == (
        "/stats", {"filter": r"rq_\d+$", "usedonly": "", "x": "1"})
    assert parse_target("/stats?filter=a+b")[1] == {"filter": "a+b"}
    assert parse_target("/ready") == ("/ready", {})


@pytest.mark.parametrize("path", READ_ONLY)
def test_read_only_endpoints_answer_get(router: Router, path: str) -> None:
    assert call(router, path).status == 200


@pytest.mark.parametrize("path", MUTATING)
def test_mutating_endpoints_refuse_get(router: Router, ctx: FakeContext, path: str) -> None:
    response = call(router, path)
    assert response.status == 405
    assert response.body == b"Method GET not allowed, POST required."
    assert ctx.calls == []


def test_other_methods(router: Router) -> None:
    assert call(router, "/healthcheck/fail", "PUT").body == b"Method PUT not allowed, POST required."
    assert call(router, "/stats", "DELETE").status == 405
    assert call(router, "/stats", "POST").status == 200


def test_unknown_path_is_404_with_help(router: Router) -> None:
    response = call(router, "/stats/nope")
    assert response.status == 404
    body = response.body.decode()
    assert body.startswith("invalid path. admin commands are:\n")
    assert "  /stats: print server stats\n" in body and "      usedonly: " in body
    assert call(router, "/stat").status == 404  # the path must equal a route, not prefix it


def test_help_is_sorted(router: Router) -> None:
    body = call(router, "/help").body.decode()
    paths = [line.split(":")[0].strip() for line in body.splitlines()[1:] if line.startswith("  /")]
    assert paths == sorted(paths) and set(paths) >= set(MUTATING + READ_ONLY)


def test_index_has_no_mutating_get_links(router: Router) -> None:
    response = call(router, "/")
    assert response.content_type.startswith("text/html")
    page = response.body.decode()
    for path in MUTATING:
        assert f"href='{path}'" not in page
        assert f"<form action='{path}' method='post'>" in page
    assert "<a href='/stats'>" in page


def test_stats_formats(router: Router) -> None:
    text = call(router, "/stats").body.decode()
    assert "cluster.svc.upstream_rq_200: 7\n" in text
    doc = json.loads(call(router, "/stats?format=json").body)
    assert doc["stats"][0]["name"] == "cluster.other.upstream_cx_total"
    prom = call(router, "/stats?format=prometheus")
    assert prom.content_type.startswith("text/plain; version=0.0.4")
    assert call(router, "/stats/prometheus").body == prom.body
    assert call(router, "/stats/prometheus?format=json").body == prom.body
    assert call(router, "/stats?format=json&pretty").body.startswith(b'{\n  "stats": [')


def test_stats_filter_regex_url_encoded(router: Router) -> None:
    body = call(router, "/stats?filter=upstream_rq_%5Cd%7B3%7D%24").body.decode()
    assert body == "cluster.svc.upstream_rq_200: 7\ncluster.svc.upstream_rq_503: 2\n"


def test_stats_usedonly_and_type(router: Router) -> None:
    body = call(router, "/stats?usedonly").body.decode()
    assert "never_used" not in body and "never_set" not in body
    body = call(router, "/stats?type=Histograms").body.decode()
    assert all(": P0(" in line or "No recorded values" in line for line in body.splitlines())


def test_stats_bad_params(router: Router) -> None:
    assert call(router, "/stats?filter=(").status == 400
    assert call(router, "/stats?type=Bogus").body == b"invalid &type= param"
    assert call(router, "/stats?format=xml").status == 400


def test_server_info_and_ready(router: Router, ctx: FakeContext) -> None:
    info = call(router, "/server_info")
    assert info.content_type == "application/json"
    doc = json.loads(info.body)
    assert doc["state"] == "LIVE" and doc["uptime_all_epochs"] == "30s"
    assert (call(router, "/ready").status, call(router, "/ready").body) == (200, b"LIVE\n")
    ctx.state = ServerState.PRE_INITIALIZING
    assert (call(router, "/ready").status, call(router, "/ready").body) == (503, b"PRE_INITIALIZING\n")


def test_healthcheck_fail_and_ok(router: Router, ctx: FakeContext) -> None:
    assert call(router, "/healthcheck/fail", "POST").body == b"OK\n"
    assert call(router, "/ready").body == b"DRAINING\n"
    assert call(router, "/healthcheck/ok", "POST").body == b"OK\n"
    assert call(router, "/ready").status == 200
    assert ctx.calls == [("healthcheck_fail",), ("healthcheck_ok",)]


def test_drain_listeners_flags(router: Router, ctx: FakeContext) -> None:
    call(router, "/drain_listeners", "POST")
    call(router, "/drain_listeners?graceful&inboundonly", "POST")
    assert ctx.calls == [("drain_listeners", "False", "False"), ("drain_listeners", "True", "True")]


def test_quitquitquit_defers_the_quit(router: Router, ctx: FakeContext) -> None:
    response = call(router, "/quitquitquit", "POST")
    assert response.body == b"OK\n" and response.after is not None and ctx.calls == []
    response.after()
    assert ctx.calls == [("quit",)]


def test_reset_counters(router: Router, ctx: FakeContext) -> None:
    assert call(router, "/reset_counters", "POST").body == b"OK\n"
    ctx.store.counter("cluster.svc.upstream_rq_200").inc(3)
    body = call(router, "/stats?filter=upstream_rq_200").body
    assert body == b"cluster.svc.upstream_rq_200: 3\n"
    assert b'envoy_response_code="200",envoy_cluster_name="svc"} 3' in call(router, "/stats/prometheus").body


def test_clusters_listeners_config_dump_hot_restart(router: Router) -> None:
    assert b"svc::127.0.0.1:8080::cx_total::3\n" in call(router, "/clusters").body
    assert json.loads(call(router, "/clusters?format=json").body)["cluster_statuses"][0]["name"] == "svc"
    assert call(router, "/listeners").body == b"ingress::0.0.0.0:10000\nredis::127.0.0.1:6380\n"
    assert "listener_statuses" in json.loads(call(router, "/listeners?format=json").body)
    assert "configs" in json.loads(call(router, "/config_dump").body)
    assert call(router, "/hot_restart_version").body == b"meshproxy.1"
