"""A fake ``AdminContext`` over a real ``stats_shm.HeapStore``, shared by the admin tests."""

from __future__ import annotations

from meshproxy.admin import ClusterInfo, HostInfo, ServerState
from stats_shm import HeapStore, Snapshot, Unit


def populated_store() -> HeapStore:
    """A store with a few stats of every kind, named like meshproxy's."""
    store = HeapStore()
    store.counter("cluster.svc.upstream_rq_200").inc(7)
    store.counter("cluster.svc.upstream_rq_503").inc(2)
    store.counter("cluster.svc.upstream_cx_total").inc(3)
    store.counter("cluster.other.upstream_cx_total").inc(1)
    store.counter("http.ingress_http.downstream_rq_5xx").inc(2)
    store.counter("listener.0.0.0.0_10000.downstream_cx_total").inc(5)
    store.counter("listener.127.0.0.1_10000.worker_1.downstream_cx_total").inc(4)
    store.counter("listener.127.0.0.1_10000.worker_0.downstream_cx_total").inc(1)
    store.counter("redis.r.command.get.total").inc(9)
    store.counter("mongo.m.cmd.insert.total").inc(4)
    store.counter("tcp.demo.downstream_cx_total").inc(6)
    store.counter("cluster.svc.never_used")  # created, never incremented
    store.counter("_host.svc.127.0.0.1:8080.rq_total").inc(3)  # internal
    store.gauge("server.uptime").set(5)
    store.gauge("cluster.svc.upstream_cx_active").set(2)
    store.gauge("server.never_set")
    rq_time = store.histogram("cluster.svc.upstream_rq_time")
    for v in (1, 2, 3, 4, 50):
        rq_time.record(v)
    store.histogram("cluster.other.upstream_rq_time")  # never recorded
    store.histogram("redis.r.command.get.latency", Unit.MICROSECONDS).record(120)
    return store


class FakeContext:
    """Records the calls that change state; serves a HeapStore's snapshot."""

    def __init__(self, store: HeapStore | None = None) -> None:
        self.store = store or populated_store()
        self.state = ServerState.LIVE
        self.calls: list[tuple[str, ...]] = []

    def snapshot(self) -> Snapshot:
        return self.store.snapshot()

    def server_info(self) -> dict[str, object]:
        return {
            "version": "meshproxy/0.1.0",
            "state": self.state.value,
            "hot_restart_version": "meshproxy.1",
            "command_line_options": {"base_id": 0, "concurrency": 2, "drain_time_s": 600},
            "uptime_current_epoch": "12s",
            "uptime_all_epochs": "30s",
            "node": {"id": "n1", "cluster": "c1"},
        }

    def clusters(self) -> list[ClusterInfo]:
        return [
            ClusterInfo("svc", "svc", (
                HostInfo("127.0.0.1:8080", cx_active=1, cx_total=3, rq_total=3, rq_success=3, zone="z1"),
                HostInfo("[::1]:8081", health_flags="/failed_active_hc", weight=2, priority=1),
            )),
            ClusterInfo("other", "other_alt"),
        ]

    def listeners(self) -> list[tuple[str, str]]:
        return [("ingress", "0.0.0.0:10000"), ("redis", "127.0.0.1:6380")]

    def config_dump(self) -> dict[str, object]:
        return {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"}]}

    def healthcheck_fail(self) -> None:
        self.calls.append(("healthcheck_fail",))
        self.state = ServerState.DRAINING

    def healthcheck_ok(self) -> None:
        self.calls.append(("healthcheck_ok",))
        self.state = ServerState.LIVE

    def drain_listeners(self, graceful: bool, inbound_only: bool) -> None:
        self.calls.append(("drain_listeners", str(graceful), str(inbound_only)))

    def quit(self) -> None:
        self.calls.append(("quit",))

    def hot_restart_version(self) -> str:
        return "meshproxy.1"
