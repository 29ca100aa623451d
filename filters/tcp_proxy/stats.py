"""tcp_proxy's stat block, ``tcp.<stat_prefix>.*`` (envoy-subset.md §5.1)."""

from __future__ import annotations

from stats_shm.block import StatBlock


class TcpProxyStats(StatBlock):
    COUNTERS = (
        "downstream_cx_total",
        "downstream_cx_no_route",
        "downstream_cx_rx_bytes_total",
        "downstream_cx_tx_bytes_total",
        "downstream_flow_control_paused_reading_total",
        "downstream_flow_control_resumed_reading_total",
        "idle_timeout",
        "max_downstream_connection_duration",
        "upstream_flush_total",
    )
    GAUGES = ("downstream_cx_rx_bytes_buffered", "downstream_cx_tx_bytes_buffered", "upstream_flush_active")
