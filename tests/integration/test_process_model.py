"""The process model end to end: worker replacement, draining, orphans, pid file, port 0.

A real main process forks real workers; the tests signal them and watch /proc and the
sockets, never meshproxy's internals.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from integration.harness import (
    MeshProxy,
    Upstream,
    connect,
    echo_handler,
    is_alive,
    proxy_config,
    roundtrip,
    time_until_closed,
    wait_for,
)

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]


def test_killed_worker_is_replaced_and_no_connection_is_lost(start_proxy: StartProxy,
                                                             start_upstream: StartUpstream) -> None:
    """Connections hashed to the dead worker's socket wait in its backlog for the replacement."""
    proxy = start_proxy(proxy_config(start_upstream(echo_handler).port))
    before = proxy.worker_pids()
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not is_alive(victim), 2.0, f"worker {victim} to die")
    for i in range(200):
        with connect(proxy.port, timeout=10.0) as sock:
            data = b"connection %d" % i
            assert roundtrip(sock, data) == data, f"connection {i} after the kill"

    def replaced() -> list[int] | None:
        pids = proxy.worker_pids()
        return pids if len(pids) == 2 and victim not in pids else None

    after = wait_for(replaced, 5.0, "a replacement worker")
    assert before[1] in after, "the surviving worker was restarted too"
    replacement = (set(after) - set(before)).pop()
    assert is_alive(replacement)
    proxy.wait_log(rf"worker \d+ \(pid {victim}\) exited unexpectedly \(killed by SIGKILL\)")


def test_sigterm_drains_open_connections_then_exits_0(start_proxy: StartProxy,
                                                      start_upstream: StartUpstream) -> None:
    drain_time_s = 30.0
    proxy = start_proxy(proxy_config(start_upstream(echo_handler).port), drain_time_s=drain_time_s)
    port = proxy.port
    with connect(port) as sock:
        assert roundtrip(sock, b"before") == b"before"
        proxy.signal(signal.SIGTERM)
        proxy.wait_log(r"worker \d+ draining", count=2)
        # The open connection is still served, in both directions...
        assert roundtrip(sock, b"during the drain") == b"during the drain"
        # ...while a new one is not: refused, reset, or left unanswered in a backlog.
        assert not _served(port), "a new connection was served during the drain"
        assert proxy.proc is not None and proxy.proc.poll() is None, "exited with a connection open"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
        closed_at = time.monotonic()
    code = proxy.wait(10.0)
    assert code == 0
    assert time.monotonic() - closed_at < 5.0, "did not exit soon after the last connection closed"


def _served(port: int) -> bool:
    """Whether a new connection to ``port`` gets its bytes echoed within a second."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"new")
            return sock.recv(3) == b"new"
    except (ConnectionError, TimeoutError):
        return False


def test_drain_deadline_closes_remaining_connections(start_proxy: StartProxy,
                                                     start_upstream: StartUpstream) -> None:
    proxy = start_proxy(proxy_config(start_upstream(echo_handler).port), drain_time_s=1)
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"open") == b"open"
        proxy.signal(signal.SIGTERM)
        elapsed = time_until_closed(sock, 10.0)
    assert 0.8 <= elapsed <= 4.0, f"closed {elapsed:.2f}s after SIGTERM with --drain-time-s 1"
    assert proxy.wait(5.0) == 0


def test_main_killed_leaves_no_orphan_workers(start_proxy: StartProxy) -> None:
    proxy = start_proxy(proxy_config(1))
    workers = proxy.worker_pids()
    assert len(workers) == 2
    proxy.signal(signal.SIGKILL)
    proxy.wait(5.0)
    wait_for(lambda: not any(map(is_alive, workers)), 2.0, f"workers {workers} to exit with the main process")


def test_pid_file_holds_the_main_pid(start_proxy: StartProxy, start_upstream: StartUpstream,
                                     tmp_path: Path) -> None:
    pid_file = tmp_path / "meshproxy.pid"
    proxy = start_proxy(proxy_config(start_upstream(echo_handler).port),
                        extra_args=["--pid-file", str(pid_file)])
    assert pid_file.read_text().strip() == str(proxy.pid)
    assert proxy.stop() == 0
    assert not pid_file.exists(), "the pid file outlived the process"


def test_listener_on_port_0_gets_an_ephemeral_port(start_proxy: StartProxy,
                                                   start_upstream: StartUpstream) -> None:
    """There is no admin endpoint yet, so the port is read from the main process's log line."""
    proxy = start_proxy(proxy_config(start_upstream(echo_handler).port))  # port_value: 0
    assert proxy.port != 0
    for i in range(20):
        with connect(proxy.port) as sock:
            assert roundtrip(sock, b"port0 %d" % i) == b"port0 %d" % i


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_idle_proxy_stops_promptly_with_exit_0(start_proxy: StartProxy, sig: int) -> None:
    proxy = start_proxy(proxy_config(1), drain_time_s=30)
    workers = proxy.worker_pids()
    start = time.monotonic()
    proxy.signal(sig)
    assert proxy.wait(5.0) == 0
    assert time.monotonic() - start < 3.0
    assert not any(map(is_alive, workers))
