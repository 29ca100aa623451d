"""Tag extraction: Envoy's default extractors, their order and the removed spans."""

from __future__ import annotations

import pytest

from meshproxy.admin.tags import DEFAULT_EXTRACTORS, TagProducer, TokenExtractor, default_producer

CASES = [
    ("cluster.svc.upstream_rq_200", "cluster.upstream_rq",
     (("envoy.response_code", "200"), ("envoy.cluster_name", "svc"))),
    ("http.ingress_http.downstream_rq_5xx", "http.downstream_rq_xx",
     (("envoy.response_code_class", "5"), ("envoy.http_conn_manager_prefix", "ingress_http"))),
    ("listener.0.0.0.0_10000.downstream_cx_total", "listener.downstream_cx_total",
     (("envoy.listener_address", "0.0.0.0_10000"),)),
    # worker_id is an unprefixed extractor, so it runs (and is listed) before listener_address.
    ("listener.127.0.0.1_10000.worker_1.downstream_cx_total", "listener.worker_downstream_cx_total",
     (("envoy.worker_id", "1"), ("envoy.listener_address", "127.0.0.1_10000"))),
    ("listener.[__1]_80.downstream_cx_active", "listener.downstream_cx_active",
     (("envoy.listener_address", "[__1]_80"),)),
    ("listener.my_prefix.worker_3.downstream_cx_active", "listener.worker_downstream_cx_active",
     (("envoy.worker_id", "3"), ("envoy.listener_address", "my_prefix"))),
    ("listener.0.0.0.0_80.http.ingress.downstream_rq_2xx", "listener.http.downstream_rq_xx",
     (("envoy.response_code_class", "2"), ("envoy.http_conn_manager_prefix", "ingress"),
      ("envoy.listener_address", "0.0.0.0_80"))),
    ("redis.r.command.get.total", "redis.command.get.total", (("envoy.redis_prefix", "r"),)),
    ("mongo.m.cmd.insert.total", "mongo.cmd.total",
     (("envoy.mongo_cmd", "insert"), ("envoy.mongo_prefix", "m"))),
    ("mongo.m.collection.users.query.total", "mongo.collection.query.total",
     (("envoy.mongo_collection", "users"), ("envoy.mongo_prefix", "m"))),
    ("mongo.m.collection.users.callsite.getUser.query.total", "mongo.collection.callsite.query.total",
     (("envoy.mongo_callsite", "getUser"), ("envoy.mongo_collection", "users"), ("envoy.mongo_prefix", "m"))),
    ("tcp.demo.downstream_cx_total", "tcp.downstream_cx_total", (("envoy.tcp_prefix", "demo"),)),
    ("ratelimit.rl.over_limit", "ratelimit.over_limit", (("envoy.ratelimit_prefix", "rl"),)),
    ("local_rate_limit.lr.rate_limited", "local_rate_limit.rate_limited",
     (("envoy.local_network_ratelimit_prefix", "lr"),)),
    ("ingress.http_local_rate_limit.rate_limited", "http_local_rate_limit.rate_limited",
     (("envoy.local_http_ratelimit_prefix", "ingress"),)),
    ("server.worker_0.watchdog_miss", "server.worker_watchdog_miss", (("envoy.worker_id", "0"),)),
    ("listener_manager.worker_2.dispatcher.loop_duration_us",
     "listener_manager.worker_dispatcher.loop_duration_us", (("envoy.worker_id", "2"),)),
    ("server.uptime", "server.uptime", ()),
    ("cluster_manager.active_clusters", "cluster_manager.active_clusters", ()),
]


@pytest.mark.parametrize(("name", "extracted", "tags"), CASES)
def test_default_extractors(name: str, extracted: str, tags: tuple[tuple[str, str], ...]) -> None:
    assert default_producer().produce(name) == (extracted, tags)


def test_admin_listener_is_not_an_address() -> None:
    name = "listener.admin.downstream_cx_total"
    assert TagProducer().produce(name) == (name, ())


def test_response_code_needs_three_digits() -> None:
    expected = ("cluster.upstream_rq_20", (("envoy.cluster_name", "c"),))
    assert TagProducer().produce("cluster.c.upstream_rq_20") == expected


def test_prefix_extractors_do_not_run_on_other_roots() -> None:
    # "cluster.$.**" must not fire on a name that merely contains ".cluster.".
    assert TagProducer().produce("tcp.cluster.x") == ("tcp.x", (("envoy.tcp_prefix", "cluster"),))


def test_trailing_double_star_needs_a_token() -> None:
    assert TagProducer().produce("redis.only") == ("redis.only", ())


def test_token_capture_of_the_last_token_removes_the_dot_before_it() -> None:
    producer = TagProducer([TokenExtractor("t", ("a", "*", "$"))])
    assert producer.produce("a.b.c") == ("a.b", (("t", "c"),))


def test_double_star_in_the_middle_backtracks() -> None:
    producer = TagProducer([TokenExtractor("t", ("a", "$", "**", "b", "c"))])
    assert producer.produce("a.x.b.b.c") == ("a.b.b.c", (("t", "x"),))
    assert producer.produce("a.x.b.c.d") == ("a.x.b.c.d", ())


def test_same_tag_name_only_tagged_once() -> None:
    names = [e.name for e in DEFAULT_EXTRACTORS]
    assert names.count("envoy.http_conn_manager_prefix") == 2
    _, tags = TagProducer().produce("listener.0.0.0.0_80.http.hcm.downstream_rq_total")
    assert [k for k, _ in tags].count("envoy.http_conn_manager_prefix") == 1


def test_results_are_cached() -> None:
    producer = TagProducer()
    first = producer.produce("cluster.a.upstream_rq_200")
    assert producer.produce("cluster.a.upstream_rq_200") is first
