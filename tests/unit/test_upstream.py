"""workers/upstream.py on a real uvloop loop and real sockets on 127.0.0.1: the connect
attempt and the upstream connection's read holds."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from typing import Any

import uvloop

from meshproxy.config.model import Cluster, Endpoint, SocketAddress
from stats_shm import HeapStore
from workers.cluster import ClusterRuntime
from workers.upstream import ConnectAttempt, UpstreamConnection


class Owner:
    """The UpstreamCallbacks a filter would give; only closing matters here."""

    def on_upstream_closed(self, exc: Exception | None) -> None:
        pass


def cluster_for(port: int, connect_timeout: float) -> ClusterRuntime:
    endpoint = Endpoint(SocketAddress("127.0.0.1", port))
    config = Cluster(name="c", connect_timeout=connect_timeout, endpoints=(endpoint,))
    return ClusterRuntime(config, HeapStore(), [("127.0.0.1", port, 1, 0)])


def attempt(server: socket.socket, connect_timeout: float, stall_s: float = 0.0) -> tuple[str, Any]:
    """One attempt at ``server``; with ``stall_s``, the loop is blocked that long as soon as
    the kernel has completed the handshake (the connection waits in the server's queue),
    before the loop has polled for the connect's completion."""
    port = server.getsockname()[1]
    outcome: list[tuple[str, Any]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        cluster = cluster_for(port, connect_timeout)
        host = cluster.hosts[0]
        finished = loop.create_future()

        def done(conn: Any, failure: str) -> None:
            outcome.append((failure, conn))
            finished.set_result(None)

        def stall_once_handshaken() -> None:
            if select.select([server], [], [], 0)[0]:
                time.sleep(stall_s)
            elif not finished.done():
                loop.call_soon(stall_once_handshaken)

        ConnectAttempt(loop, cluster, host, UpstreamConnection(Owner(), cluster, host, 1 << 20), done)
        if stall_s:
            loop.call_soon(stall_once_handshaken)
        await asyncio.wait_for(finished, 5)
        conn = outcome[0][1]
        if conn is not None:
            conn.transport.close()

    uvloop.run(run())
    return outcome[0]


def test_a_stalled_loop_does_not_time_out_a_completed_handshake() -> None:
    # After the stall both the timer and the connect's completion are ready; libuv runs
    # timers first. The kernel finished the handshake long before the deadline.
    with socket.create_server(("127.0.0.1", 0)) as server:
        failure, conn = attempt(server, connect_timeout=0.05, stall_s=0.3)
    assert failure == "" and conn is not None


def test_a_host_that_does_not_answer_still_times_out() -> None:
    # A listener with a full backlog leaves the handshake unfinished (SYNs are dropped).
    with socket.create_server(("127.0.0.1", 0), backlog=0) as server:
        port = server.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        time.sleep(0.1)
        try:
            started = time.monotonic()
            failure, conn = attempt(server, connect_timeout=0.2)
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert failure == "connect_timeout" and conn is None
    assert elapsed < 2.0


def test_flow_control_cannot_resume_a_held_upstream() -> None:
    # A relay switching a direction to splice holds the upstream's reading; flow control's
    # resume (the downstream drained) must not restart uvloop's reads under the splice.
    states: list[tuple[str, bool]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            cluster = cluster_for(port, 1.0)
            host = cluster.hosts[0]
            conn = UpstreamConnection(Owner(), cluster, host, 1 << 20)
            connected = loop.create_future()
            ConnectAttempt(loop, cluster, host, conn, lambda c, failure: connected.set_result(failure))
            assert await asyncio.wait_for(connected, 5) == ""
            transport = conn.transport
            assert transport is not None

            def note(step: str) -> None:
                states.append((step, transport.is_reading()))

            conn.pause_reading()  # flow control: the downstream is backed up
            conn.hold_reading(True)
            conn.resume_reading()  # the downstream drained
            note("held, flow control resumed")
            conn.hold_reading(True)
            conn.hold_reading(False)
            note("one of two holds released")
            conn.hold_reading(False)
            note("all released")
            conn.hold_reading(True)
            conn.pause_reading()
            conn.hold_reading(False)
            note("released while flow control pauses")
            conn.resume_reading()
            note("flow control resumed")
            transport.close()

    uvloop.run(run())
    assert states == [("held, flow control resumed", False), ("one of two holds released", False),
                      ("all released", True), ("released while flow control pauses", False),
                      ("flow control resumed", True)]
