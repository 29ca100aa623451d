"""Envoy's stat names for the worker layer: listeners and clusters (envoy-subset.md §4, §7)."""

from __future__ import annotations

from stats_shm.block import StatBlock, sanitize

__all__ = ["ClusterStats", "ListenerStats", "ListenerWorkerStats", "sanitize"]


class ListenerStats(StatBlock):
    COUNTERS = (
        "downstream_cx_total",
        "downstream_cx_destroy",
        "downstream_cx_overflow",
        "no_filter_chain_match",
    )
    GAUGES = ("downstream_cx_active",)
    HISTOGRAMS = ("downstream_cx_length_ms",)


class ListenerWorkerStats(StatBlock):
    COUNTERS = ("downstream_cx_total",)
    GAUGES = ("downstream_cx_active",)


class ClusterStats(StatBlock):
    COUNTERS = (
        "upstream_cx_total",
        "upstream_cx_connect_fail",
        "upstream_cx_connect_timeout",
        "upstream_cx_connect_attempts_exceeded",
        "upstream_cx_none_healthy",
        "upstream_cx_overflow",
        "upstream_cx_destroy",
        "upstream_cx_destroy_local",
        "upstream_cx_destroy_remote",
        "upstream_cx_rx_bytes_total",
        "upstream_cx_tx_bytes_total",
        "upstream_cx_idle_timeout",
        "upstream_flow_control_paused_reading_total",
        "upstream_flow_control_resumed_reading_total",
        "upstream_flow_control_backed_up_total",
        "upstream_flow_control_drained_total",
        "upstream_rq_total",
        "upstream_rq_timeout",
    )
    GAUGES = ("upstream_cx_active", "upstream_rq_active")
    HISTOGRAMS = ("upstream_cx_connect_ms", "upstream_cx_length_ms")
