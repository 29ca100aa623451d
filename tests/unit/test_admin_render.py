"""/stats text and JSON, parameters, flush intervals, reset baseline, /clusters and /listeners."""

from __future__ import annotations

import json
import math
import re

import pytest
from admin_fakes import FakeContext, populated_store

from meshproxy.admin import ClusterInfo, HostInfo, host_stat_name, host_stats
from meshproxy.admin.render_clusters import (
    clusters_json,
    render_clusters_text,
    render_listeners_json,
    render_listeners_text,
    split_address,
)
from meshproxy.admin.render_json import render_json
from meshproxy.admin.render_text import QUANTILE_LABELS, format_double, histogram_summary, render_text
from meshproxy.admin.stats_view import (
    AdminStatsState,
    HistogramView,
    ParamError,
    StatsFormat,
    StatsParams,
    StatsType,
    select,
)
from stats_shm import HeapStore, HistogramData


def test_format_double_like_envoy_fmt() -> None:
    assert format_double(math.nan) == "nan"
    assert format_double(1.0) == "1"
    assert format_double(2.5) == "2.5"
    assert format_double(-1.0) == "-1"
    assert format_double(1e16) == "1e+16"
    assert format_double(0.96875) == "0.96875"
    assert format_double(49.99200000000001) == "49.992"  # estimates are rounded to 6 digits
    assert format_double(1234567.0) == "1234570"


def test_quantile_labels() -> None:
    assert QUANTILE_LABELS == ("P0", "P25", "P50", "P75", "P90", "P95", "P99", "P99.5", "P99.9", "P100")


def test_histogram_summary_forms() -> None:
    empty = HistogramData.empty()
    assert histogram_summary(HistogramView("h", empty, None)) == "No recorded values"
    store = HeapStore()
    h = store.histogram("h")
    h.record(1)
    one = store.snapshot().histograms["h"]
    # No interval yet: nan for every interval value, as Envoy before its first flush.
    summary = histogram_summary(HistogramView("h", one, None))
    parts = summary.split(" ")
    assert [p.split("(")[0] for p in parts] == list(QUANTILE_LABELS)
    assert all(re.fullmatch(r"P[\d.]+\(nan,(0\.9\d*|1)\)", p) for p in parts), summary
    assert parts[-1] == "P100(nan,1)"
    summary = histogram_summary(HistogramView("h", one, one))
    assert summary.startswith("P0(0.96875,0.96875) ") and summary.endswith(" P100(1,1)")
    # An interval without samples prints nan too.
    assert "P50(nan," in histogram_summary(HistogramView("h", one, empty))


def test_text_order_and_hidden_names() -> None:
    text = render_text(select(populated_store().snapshot(), StatsParams()))
    lines = text.splitlines()
    scalars = [line for line in lines if ": P0(" not in line and "No recorded values" not in line]
    histos = lines[len(scalars):]
    assert scalars == sorted(scalars)
    assert "server.uptime: 5" in scalars and "cluster.svc.upstream_rq_200: 7" in scalars
    assert histos[0] == "cluster.other.upstream_rq_time: No recorded values"
    assert histos[1].startswith("cluster.svc.upstream_rq_time: P0(nan,")
    assert not any(line.startswith("_") for line in lines)


def test_params_parse_and_errors() -> None:
    p = StatsParams.parse({"usedonly": "", "filter": r"rq_\d+", "type": "Counters", "format": "json"})
    assert p.used_only and p.filter is not None
    assert p.type is StatsType.COUNTERS and p.format is StatsFormat.JSON
    assert StatsParams.parse({}).format is StatsFormat.TEXT
    assert StatsParams.parse({"filter": ""}).filter is None
    with pytest.raises(ParamError, match="Invalid re2 regex"):
        StatsParams.parse({"filter": "("})
    with pytest.raises(ParamError, match="invalid &type= param"):
        StatsParams.parse({"type": "counters"})
    with pytest.raises(ParamError, match="usage: /stats"):
        StatsParams.parse({"format": "xml"})


def test_select_filter_usedonly_type() -> None:
    snap = populated_store().snapshot()
    sel = select(snap, StatsParams(filter=re.compile("upstream_cx")))
    assert [n for n, _ in sel.scalars()] == [
        "cluster.other.upstream_cx_total", "cluster.svc.upstream_cx_active", "cluster.svc.upstream_cx_total"]
    used = select(snap, StatsParams(used_only=True))
    names = {n for n, _ in used.scalars()} | {h.name for h in used.histograms}
    assert "cluster.svc.never_used" not in names and "server.never_set" not in names
    assert "cluster.other.upstream_rq_time" not in names and "cluster.svc.upstream_rq_time" in names
    only = select(snap, StatsParams(type=StatsType.GAUGES))
    assert not only.counters and not only.histograms and ("server.uptime", 5) in only.gauges
    only = select(snap, StatsParams(type=StatsType.HISTOGRAMS))
    assert not only.scalars() and only.histograms


def test_json_shape() -> None:
    doc = json.loads(render_json(select(populated_store().snapshot(), StatsParams())))
    stats = doc["stats"]
    assert stats[0] == {"name": "cluster.other.upstream_cx_total", "value": 1}
    assert all(set(s) == {"name", "value"} for s in stats[:-1])
    hist = stats[-1]["histograms"]
    assert hist["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    computed = {c["name"]: c["values"] for c in hist["computed_quantiles"]}
    values = computed["cluster.svc.upstream_rq_time"]
    assert len(values) == 10 and set(values[0]) == {"interval", "cumulative"}
    assert values[0]["interval"] is None and values[-1]["cumulative"] == 50
    assert computed["cluster.other.upstream_rq_time"][0] == {"interval": None, "cumulative": None}


def test_json_without_histograms_has_no_histogram_entry() -> None:
    doc = json.loads(render_json(select(populated_store().snapshot(), StatsParams(type=StatsType.COUNTERS))))
    assert doc["stats"] and all("histograms" not in s for s in doc["stats"])


def test_flush_intervals() -> None:
    store = HeapStore()
    h = store.histogram("h")
    state = AdminStatsState()
    h.record(8)  # powers of two are bucket edges: P100 is exact
    state.record_flush(store.snapshot())  # first period: the sample at 8
    h.record(1024)
    view = state.select(store.snapshot(), StatsParams()).histograms[0]
    assert view.interval is not None and view.interval.count == 1 and view.cumulative.count == 2
    assert histogram_summary(view).endswith(" P100(8,1024)")
    state.record_flush(store.snapshot())  # second period: the sample at 1024
    view = state.select(store.snapshot(), StatsParams()).histograms[0]
    assert histogram_summary(view).endswith(" P100(1024,1024)")
    state.record_flush(store.snapshot())  # an empty period
    view = state.select(store.snapshot(), StatsParams()).histograms[0]
    assert histogram_summary(view).startswith("P0(nan,")


def test_reset_counters_is_display_only() -> None:
    store = HeapStore()
    c = store.counter("c")
    c.inc(5)
    state = AdminStatsState()
    state.reset_counters(store.snapshot())
    c.inc(2)
    assert ("c", 2) in state.select(store.snapshot(), StatsParams()).counters
    assert store.snapshot().counters["c"] == 7  # the segment (and sinks) see the real value


def test_clusters_text_and_json() -> None:
    clusters = FakeContext().clusters()
    lines = render_clusters_text(clusters).splitlines()
    assert lines[:10] == [
        "svc::observability_name::svc",
        "svc::default_priority::max_connections::1024",
        "svc::default_priority::max_pending_requests::1024",
        "svc::default_priority::max_requests::1024",
        "svc::default_priority::max_retries::3",
        "svc::high_priority::max_connections::1024",
        "svc::high_priority::max_pending_requests::1024",
        "svc::high_priority::max_requests::1024",
        "svc::high_priority::max_retries::3",
        "svc::added_via_api::false",
    ]
    host = [line.split("::", 2)[2] for line in lines if line.startswith("svc::127.0.0.1:8080::")]
    assert host == ["cx_active::1", "cx_connect_fail::0", "cx_total::3", "rq_active::0", "rq_error::0",
                    "rq_success::3", "rq_timeout::0", "rq_total::3", "hostname::", "health_flags::healthy",
                    "weight::1", "region::", "zone::z1", "sub_zone::", "canary::false", "priority::0",
                    "success_rate::-1", "local_origin_success_rate::-1"]
    assert "svc::[::1]:8081::health_flags::/failed_active_hc" in lines
    assert "other::observability_name::other_alt" in lines

    doc = clusters_json(clusters)
    svc = doc["cluster_statuses"][0]  # type: ignore[index]
    assert svc["name"] == "svc" and svc["observability_name"] == "svc"
    assert svc["circuit_breakers"]["thresholds"][1]["priority"] == "HIGH"
    h0, h1 = svc["host_statuses"]
    assert h0["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}
    assert {"name": "cx_total", "value": "3"} in h0["stats"]
    assert {"name": "cx_active", "type": "GAUGE", "value": "1"} in h0["stats"]
    assert {"name": "rq_error"} in h0["stats"]  # proto3 JSON omits zero values
    assert h0["health_status"] == {"eds_health_status": "HEALTHY"} and h0["locality"] == {"zone": "z1"}
    assert h1["address"]["socket_address"]["address"] == "::1"
    assert h1["health_status"]["failed_active_health_check"] is True and h1["priority"] == 1


def test_listeners() -> None:
    listeners = FakeContext().listeners()
    assert render_listeners_text(listeners) == "ingress::0.0.0.0:10000\nredis::127.0.0.1:6380\n"
    doc = json.loads(render_listeners_json(listeners))
    assert doc["listener_statuses"][0] == {
        "name": "ingress", "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}}}
    assert split_address("[::]:80") == ("::", 80)


def test_host_stats_from_the_segment_names() -> None:
    store = HeapStore()
    store.counter(host_stat_name("svc", "127.0.0.1:8080", "rq_total")).inc(3)
    store.gauge(host_stat_name("svc", "127.0.0.1:8080", "cx_active")).set(1)
    stats = host_stats(store.snapshot(), "svc", "127.0.0.1:8080")
    assert stats["rq_total"] == 3 and stats["cx_active"] == 1 and stats["rq_error"] == 0
    host = HostInfo("127.0.0.1:8080", **stats)
    assert "svc::127.0.0.1:8080::rq_total::3" in render_clusters_text([ClusterInfo("svc", hosts=(host,))])
    assert all(not name.startswith("_") for name, _ in select(store.snapshot(), StatsParams()).scalars())
