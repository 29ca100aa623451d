"""The schema toolkit on its own: durations, enums, paths, sources and a filter-style parse."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from filters.config_schema import (
    Message,
    ParseContext,
    as_dict,
    cluster_ref,
    enum_field,
    join,
    parse_duration,
    parse_typed_config,
    string,
    unsupported,
)
from filters.tcp_proxy.config import TcpProxyConfig, parse


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5s", 5.0), ("0.25s", 0.25), ("1.5s", 1.5), ("0s", 0.0), ("0.000000001s", 1e-9),
     ({"seconds": 2, "nanos": 500_000_000}, 2.5), ({"nanos": 1000}, 1e-6), ({}, 0.0)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [(5, "got integer 5 (write '5s')"), (0.5, "got number 0.5"), ("-1s", "non-negative"),
     ("250ms", "'s' suffix"), ("5", "expected a duration such as"), ("1.5 s", "expected a duration"),
     (True, "got boolean"),
     ({"seconds": -1}, "seconds >= 0"), ({"nanos": 10**9}, "nanos in"), ({"minutes": 1}, "only 'seconds'"),
     ({"seconds": "1"}, "integer")],
)
def test_parse_duration_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message in str(info.value)


def test_join_quotes_keys_that_are_not_identifiers() -> None:
    assert join("", "admin") == "admin"
    assert join("a", "b") == "a.b"
    assert join("a", 3) == "a[3]"
    assert join("opts", "envoy.filters.network.redis_proxy") == 'opts["envoy.filters.network.redis_proxy"]'


class Color(enum.Enum):
    RED = "RED"
    GREEN = "GREEN"


def test_enums_are_case_insensitive_and_know_envoy_only_values() -> None:
    field = enum_field(Color, Color.RED, envoy_only=("BLUE",))
    ctx = ParseContext()
    assert field.parse("green", ctx, "c") is Color.GREEN
    field.parse("blue", ctx, "c")
    field.parse("GREN", ctx, "c")
    assert ctx.errors == [
        "c: BLUE is a valid Envoy value but not supported by meshproxy (supported: RED, GREEN)",
        "c: expected one of RED, GREEN, got 'GREN' (did you mean 'GREEN'?)",
    ]


def test_sources_use_the_longest_recorded_prefix() -> None:
    ctx = ParseContext({"static_resources": "a.yaml", "static_resources.clusters[1]": "b.yaml",
                        "static_resources.clusters[10]": "c.yaml"}, default_source="x")
    assert ctx.source_of("static_resources.clusters[1].name") == "b.yaml"
    assert ctx.source_of("static_resources.clusters[10]") == "c.yaml"
    assert ctx.source_of("static_resources.clusters[0]") == "a.yaml"
    assert ctx.source_of("static_resources_x") == "x"
    assert ctx.source_of("admin") == "x"


def test_views_share_errors_and_clusters() -> None:
    ctx = ParseContext()
    view = ctx.at("a.b")
    assert view.path == "a.b"
    view.error(join(view.path, "c"), "bad")
    view.declare_cluster("x")
    assert ctx.errors == ["a.b.c: bad"] and ctx.cluster_names == {"x"}


SPEC: Message[dict[str, Any]] = Message(
    "test.v3.Thing",
    fields={"name": string(required=True), "cluster": cluster_ref()},
    unsupported=unsupported("fancy"),
    removed={"old": "use name"},
    build=as_dict,
)


def test_message_reports_each_kind_of_field_error() -> None:
    ctx = ParseContext(default_source="f.yaml")
    assert SPEC.parse({"nmae": 1, "fancy": 2, "old": 3, 4: 5}, ctx, "t") is None
    assert ctx.errors == [
        "f.yaml: t.nmae: unknown field 'nmae' in Thing (did you mean 'name'?)",
        "f.yaml: t.fancy: field 'fancy' is a valid Envoy field but not supported by meshproxy",
        "f.yaml: t.old: field 'old' was removed in v3: use name",
        "f.yaml: t: field names must be strings, got integer 4",
        "f.yaml: t: missing required field 'name' in Thing",
    ]


def test_null_is_absent_and_defaults_fill_in() -> None:
    ctx = ParseContext()
    assert SPEC.parse({"name": "n", "cluster": None}, ctx, "t") == {"name": "n", "cluster": None}
    ctx.check_cluster_refs()
    assert ctx.errors == []


def test_cluster_refs_are_checked_after_declarations() -> None:
    ctx = ParseContext()
    SPEC.parse({"name": "n", "cluster": "late"}, ctx, "t")
    SPEC.parse({"name": "n", "cluster": "missing"}, ctx, "u")
    ctx.declare_cluster("late")
    ctx.check_cluster_refs()
    assert ctx.errors == ["u.cluster: unknown cluster 'missing'"]


def test_typed_config() -> None:
    ctx = ParseContext()
    url = "example.com/a.b.C"  # the host part is ignored, as in Envoy
    assert parse_typed_config({"@type": url, "x": 1}, ctx, "p") == (url, {"x": 1})
    assert parse_typed_config({"@type": "type.googleapis.com/envoy.api.v2.Cluster"}, ctx, "p") is None
    assert parse_typed_config({"@type": "nourl"}, ctx, "p") is None
    assert parse_typed_config("x", ctx, "p") is None
    assert len(ctx.errors) == 3 and "v2 API" in ctx.errors[0]


def test_check_fields_for_schema_less_filters() -> None:
    ctx = ParseContext().at("typed_config")
    assert ctx.check_fields({}, allowed=())
    assert not ctx.check_fields({"stat_prefx": "x"}, allowed=("stat_prefix",))
    assert ctx.errors == ["typed_config.stat_prefx: unknown field 'stat_prefx' (did you mean 'stat_prefix'?)"]


def test_tcp_proxy_parse_positions_errors_at_the_context_path() -> None:
    ctx = ParseContext(default_source="conf.yaml")
    view = ctx.at("listeners[0].filters[0].typed_config")
    assert parse({"stat_prefix": "p", "cluster": "c", "idle_timeout": "0s"}, view) == TcpProxyConfig(
        stat_prefix="p", cluster="c", idle_timeout=None)
    assert parse({"stat_prefix": "p", "cluster": "c", "hash_policy": []}, view) is None
    assert ctx.errors == ["conf.yaml: listeners[0].filters[0].typed_config.hash_policy: "
                          "field 'hash_policy' is a valid Envoy field but not supported by meshproxy"]
