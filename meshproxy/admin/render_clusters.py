"""``/clusters`` and ``/listeners`` in Envoy's text and JSON forms (envoy-subset.md §8).

Text ``/clusters``, per cluster::

    svc::observability_name::svc
    svc::default_priority::max_connections::1024      (and max_pending_requests,
    svc::high_priority::max_connections::1024          max_requests, max_retries)
    svc::added_via_api::false
    svc::127.0.0.1:8080::cx_active::0                 (every host stat, sorted by name)
    svc::127.0.0.1:8080::hostname::
    svc::127.0.0.1:8080::health_flags::healthy
    ... weight, region, zone, sub_zone, canary, priority, success_rate,
        local_origin_success_rate

JSON follows ``admin.v3.Clusters`` / ``admin.v3.Listeners`` as protobuf's JSON mapping
prints them: fields at their default (0, "", false) are omitted, 64-bit integers are
strings, enums by name.
"""

from __future__ import annotations

import json
from typing import Final

from meshproxy.admin.context import (
    HOST_COUNTERS,
    HOST_GAUGES,
    CircuitBreakerThresholds,
    ClusterInfo,
    HostInfo,
)
from meshproxy.admin.render_text import format_double

_SORTED_HOST_STATS: Final = tuple(sorted(HOST_COUNTERS + HOST_GAUGES))
_THRESHOLDS: Final = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
# health_flags tokens -> admin.v3.HostHealthStatus boolean fields.
_HEALTH_FIELDS: Final = {
    "failed_active_hc": "failed_active_health_check",
    "failed_outlier_check": "failed_outlier_check",
    "degraded_active_hc": "failed_active_degraded_check",
    "pending_dynamic_removal": "pending_dynamic_removal",
    "pending_active_hc": "pending_active_hc",
    "excluded_via_immediate_hc_fail": "excluded_via_immediate_hc_fail",
    "active_hc_timeout": "active_hc_timeout",
}


def split_address(address: str) -> tuple[str, int]:
    """``"1.2.3.4:80"`` or ``"[::1]:80"`` -> (ip, port); port 0 if there is none."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, 0
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _socket_address(address: str) -> dict[str, object]:
    ip, port = split_address(address)
    socket_address: dict[str, object] = {"address": ip}
    if port:
        socket_address["port_value"] = port
    return {"socket_address": socket_address}


def render_clusters_text(clusters: list[ClusterInfo]) -> str:
    out: list[str] = []
    for cluster in clusters:
        c = cluster.name
        out.append(f"{c}::observability_name::{cluster.observability_name or c}\n")
        for label, limits in (("default", cluster.default_priority), ("high", cluster.high_priority)):
            for key in _THRESHOLDS:
                out.append(f"{c}::{label}_priority::{key}::{getattr(limits, key)}\n")
        out.append(f"{c}::added_via_api::{_bool(cluster.added_via_api)}\n")
        for host in cluster.hosts:
            h = f"{c}::{host.address}::"
            out.extend(f"{h}{stat}::{getattr(host, stat)}\n" for stat in _SORTED_HOST_STATS)
            out.append(f"{h}hostname::{host.hostname}\n")
            out.append(f"{h}health_flags::{host.health_flags}\n")
            out.append(f"{h}weight::{host.weight}\n")
            out.append(f"{h}region::{host.region}\n")
            out.append(f"{h}zone::{host.zone}\n")
            out.append(f"{h}sub_zone::{host.sub_zone}\n")
            out.append(f"{h}canary::{_bool(host.canary)}\n")
            out.append(f"{h}priority::{host.priority}\n")
            out.append(f"{h}success_rate::{format_double(host.success_rate)}\n")
            out.append(f"{h}local_origin_success_rate::{format_double(host.local_origin_success_rate)}\n")
    return "".join(out)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _thresholds(priority: str | None, limits: CircuitBreakerThresholds) -> dict[str, object]:
    entry: dict[str, object] = {} if priority is None else {"priority": priority}
    for key in _THRESHOLDS:
        entry[key] = getattr(limits, key)  # UInt32Value wrappers: always present, plain numbers
    return entry


def _host_json(host: HostInfo) -> dict[str, object]:
    stats: list[dict[str, object]] = []
    for name in HOST_COUNTERS:
        metric: dict[str, object] = {"name": name}
        if getattr(host, name):
            metric["value"] = str(getattr(host, name))
        stats.append(metric)
    for name in HOST_GAUGES:
        metric = {"name": name, "type": "GAUGE"}
        if getattr(host, name):
            metric["value"] = str(getattr(host, name))
        stats.append(metric)
    flags = {token for token in host.health_flags.split("/") if token and token != "healthy"}
    health: dict[str, object] = {}
    for token, field_name in _HEALTH_FIELDS.items():
        if token in flags:
            health[field_name] = True
    if "failed_eds_health" in flags:
        health["eds_health_status"] = "UNHEALTHY"
    elif "degraded_eds_health" in flags:
        health["eds_health_status"] = "DEGRADED"
    else:
        health["eds_health_status"] = "HEALTHY"
    entry: dict[str, object] = {"address": _socket_address(host.address), "stats": stats,
                                "health_status": health}
    if host.success_rate >= 0:
        entry["success_rate"] = {"value": host.success_rate}
    if host.weight:
        entry["weight"] = host.weight
    if host.hostname:
        entry["hostname"] = host.hostname
    if host.priority:
        entry["priority"] = host.priority
    if host.local_origin_success_rate >= 0:
        entry["local_origin_success_rate"] = {"value": host.local_origin_success_rate}
    entry["locality"] = {k: v for k, v in (("region", host.region), ("zone", host.zone),
                                           ("sub_zone", host.sub_zone)) if v}
    return entry


def clusters_json(clusters: list[ClusterInfo]) -> dict[str, object]:
    statuses: list[dict[str, object]] = []
    for cluster in clusters:
        status: dict[str, object] = {
            "name": cluster.name,
            "circuit_breakers": {"thresholds": [_thresholds(None, cluster.default_priority),
                                                _thresholds("HIGH", cluster.high_priority)]},
            "observability_name": cluster.observability_name or cluster.name,
        }
        if cluster.added_via_api:
            status["added_via_api"] = True
        if cluster.hosts:
            status["host_statuses"] = [_host_json(h) for h in cluster.hosts]
        statuses.append(status)
    return {"cluster_statuses": statuses} if statuses else {}


def render_clusters_json(clusters: list[ClusterInfo]) -> str:
    return json.dumps(clusters_json(clusters), indent=1) + "\n"


def render_listeners_text(listeners: list[tuple[str, str]]) -> str:
    return "".join(f"{name}::{address}\n" for name, address in listeners)


def render_listeners_json(listeners: list[tuple[str, str]]) -> str:
    statuses = [{"name": name, "local_address": _socket_address(address)} for name, address in listeners]
    return json.dumps({"listener_statuses": statuses} if statuses else {}, indent=1) + "\n"
