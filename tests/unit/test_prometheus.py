"""Prometheus exposition: parsed back with prometheus_client, one TYPE per family, labels."""

from __future__ import annotations

import re

from admin_fakes import populated_store
from prometheus_client.parser import text_string_to_metric_families

from meshproxy.admin.prometheus import render_prometheus, sanitize_name
from meshproxy.admin.stats_view import StatsParams, select
from stats_shm import PROMETHEUS_DEFAULT_BOUNDS, HeapStore


def _render(store: HeapStore, **params: object) -> str:
    return render_prometheus(select(store.snapshot(), StatsParams(**params)))  # type: ignore[arg-type]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_parses_with_one_type_line_per_family() -> None:
    text = _render(populated_store())
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["envoy_cluster_upstream_rq"] == "counter"
    assert families["envoy_server_uptime"] == "gauge"
    assert families["envoy_cluster_upstream_rq_time"] == "histogram"
    # The parser names a counter family without its "_total"; the samples keep it.
    assert families["envoy_mongo_cmd"] == "counter"
    samples = {name for name, _ in _samples(text)}
    assert samples >= {"envoy_listener_worker_downstream_cx_total", "envoy_mongo_cmd_total",
                       "envoy_redis_command_get_total", "envoy_tcp_downstream_cx_total"}


def test_exact_lines_for_the_envoy_examples() -> None:
    text = _render(populated_store())
    for line in (
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="svc"} 7',
        'envoy_http_downstream_rq_xx{envoy_response_code_class="5",'
        'envoy_http_conn_manager_prefix="ingress_http"} 2',
        'envoy_listener_downstream_cx_total{envoy_listener_address="0.0.0.0_10000"} 5',
        'envoy_listener_worker_downstream_cx_total{envoy_worker_id="1",'
        'envoy_listener_address="127.0.0.1_10000"} 4',
        'envoy_redis_command_get_total{envoy_redis_prefix="r"} 9',
        'envoy_mongo_cmd_total{envoy_mongo_cmd="insert",envoy_mongo_prefix="m"} 4',
        'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="demo"} 6',
        "envoy_server_uptime{} 5",
    ):
        assert line in text.splitlines(), line


def test_kind_order_and_family_grouping() -> None:
    text = _render(populated_store())
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    kinds = [line.split()[3] for line in type_lines]
    assert kinds == sorted(kinds, key=["counter", "gauge", "histogram"].index)
    for kind in ("counter", "gauge", "histogram"):
        names = [line.split()[2] for line in type_lines if line.endswith(" " + kind)]
        assert names == sorted(names)
    # Each family: TYPE line, its samples, one blank line.
    block = text.split("# TYPE envoy_cluster_upstream_cx_total counter\n")[1].split("\n\n")[0]
    assert block.splitlines() == ['envoy_cluster_upstream_cx_total{envoy_cluster_name="other"} 1',
                                  'envoy_cluster_upstream_cx_total{envoy_cluster_name="svc"} 3']


def test_histogram_buckets_sum_count() -> None:
    store = HeapStore()
    h = store.histogram("cluster.c.upstream_rq_time")
    for v in (0.5, 1, 3, 10, 700, 5_000_000):
        h.record(v)
    text = _render(store)
    samples = _samples(text)
    labels = (("envoy_cluster_name", "c"),)
    bucket = {le: samples[("envoy_cluster_upstream_rq_time_bucket", tuple(sorted((*labels, ("le", le)))))]
              for le in [f"{b:.32g}" for b in PROMETHEUS_DEFAULT_BOUNDS] + ["+Inf"]}
    assert list(bucket)[:3] == ["0.5", "1", "5"]
    assert bucket["0.5"] == 1 and bucket["1"] == 2 and bucket["5"] == 3 and bucket["10"] == 4
    assert bucket["1000"] == 5 and bucket["3600000"] == 5 and bucket["+Inf"] == 6
    assert samples[("envoy_cluster_upstream_rq_time_count", labels)] == 6
    assert samples[("envoy_cluster_upstream_rq_time_sum", labels)] == 0.5 + 1 + 3 + 10 + 700 + 5_000_000
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="c",le="+Inf"} 6' in text


def test_usedonly_and_filter() -> None:
    store = populated_store()
    text = _render(store, used_only=True)
    assert "never_used" not in text and "never_set" not in text
    assert "envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"other\"}" not in text
    text = _render(store, filter=re.compile(r"upstream_rq_\d+$"))
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {"envoy_cluster_upstream_rq"}


def test_internal_names_are_hidden() -> None:
    assert "_host" not in _render(populated_store())


def test_label_values_are_escaped() -> None:
    store = HeapStore()
    store.counter('cluster.we"ird\\name.upstream_cx_total').inc()
    text = _render(store)
    assert 'envoy_cluster_name="we\\"ird\\\\name"' in text
    assert _samples(text)[("envoy_cluster_upstream_cx_total", (("envoy_cluster_name", 'we"ird\\name'),))] == 1


def test_names_that_sanitize_alike_share_one_family() -> None:
    store = HeapStore()
    store.counter("a.b-c").inc()
    store.counter("a.b_c").inc(2)
    store.gauge("a.b:c").set(3)  # same metric name as a counter family: skipped, not redeclared
    text = _render(store)
    assert text.count("# TYPE envoy_a_b_c ") == 1
    list(text_string_to_metric_families(text))


def test_sanitize_name() -> None:
    assert sanitize_name("cluster.upstream-rq") == "cluster_upstream_rq"
    assert sanitize_name("0abc") == "_0abc"
