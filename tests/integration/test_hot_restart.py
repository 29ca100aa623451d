"""Hot restart (SIGHUP): real generations of real processes, under load.

The main PID changes on each reload, so tests follow it through ``--pid-file``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from integration.harness import (
    LOCALHOST,
    REPO_ROOT,
    MeshProxy,
    Upstream,
    bootstrap,
    echo_handler,
    free_port,
    listener,
    socket_address,
    static_cluster,
    tcp_proxy_filter,
    wait_for,
    write_yaml,
)

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]


def config_for(admin: int, upstream: Upstream, port: int) -> dict[str, Any]:
    """One tcp_proxy listener "main" on ``port`` in front of ``upstream``, admin on ``admin``."""
    return admin_config(admin, upstream.port, {"main": port})


def admin_config(admin: int, upstream: int, listeners: dict[str, int]) -> dict[str, Any]:
    config = bootstrap([listener(name, port, tcp_proxy_filter("backend", stat_prefix=name))
                        for name, port in listeners.items()],
                       # Envoy's default connect timeout: the reload tests are about dropped
                       # connections, and a loaded CI host can stall a worker for over a second.
                       [static_cluster("backend", [upstream], connect_timeout="5s")])
    config["admin"] = {"address": socket_address(admin)}
    return config


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOCALHOST}:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def server_info(admin: int) -> dict[str, Any]:
    return json.loads(get(admin, "/server_info")[1])


def read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def reload_and_wait(pid_file: Path, admin: int, timeout: float = 30.0) -> int:
    """SIGHUP the current main process; wait until a new one serves (pid file and admin agree)."""
    old = read_pid(pid_file)
    epoch = server_info(admin)["hot_restart_epoch"]
    os.kill(old, signal.SIGHUP)
    new = wait_for(lambda: (p := read_pid(pid_file)) != old and p, timeout, "new generation's pid file")
    wait_for(lambda: server_info(admin)["hot_restart_epoch"] == epoch + 1, timeout, "admin of the new epoch")
    return int(new)


def start(start_proxy: StartProxy, tmp_path: Path, config: dict[str, Any], **options: Any) -> tuple[
        MeshProxy, Path, Path]:
    config_path = write_yaml(tmp_path / "meshproxy.yaml", config)
    pid_file = tmp_path / "meshproxy.pid"
    extra = ["--pid-file", str(pid_file), "--parent-shutdown-time-s", str(options.pop("shutdown", 90)),
             *options.pop("extra_args", [])]
    proxy = start_proxy(None, config_args=["-c", str(config_path)], extra_args=extra,
                        drain_time_s=options.pop("drain", 60), **options)
    wait_for(lambda: read_pid(pid_file) == proxy.pid, 10, "pid file")
    return proxy, config_path, pid_file


class ShortConnections(threading.Thread):
    """Connect, echo 1 KiB, close, in a loop; every failure is recorded."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.done = 0
        self.failures: list[str] = []

    def run(self) -> None:
        payload = os.urandom(1024)
        while not self.stop.is_set():
            try:
                # A slow answer is not a dropped connection: a loaded CI host can stall every
                # process for seconds while a new generation starts.
                with socket.create_connection((LOCALHOST, self.port), timeout=15) as sock:
                    sock.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        got += chunk
                if got != payload:
                    self.failures.append(f"short echo mismatch ({len(got)} bytes)")
                self.done += 1
            except OSError as exc:
                self.failures.append(repr(exc))


class Stream(threading.Thread):
    """One long-lived connection streaming data through the proxy until told to finish."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((LOCALHOST, port), timeout=10)
        self.stop = threading.Event()
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.sent_bytes = self.received_bytes = 0
        self.error: str | None = None

    def run(self) -> None:
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        try:
            while not self.stop.is_set():
                chunk = os.urandom(4096)
                self.sock.sendall(chunk)
                self.sent.update(chunk)
                self.sent_bytes += len(chunk)
                time.sleep(0.01)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.error = f"send: {exc!r}"
        reader.join(30)

    def _read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                self.received.update(chunk)
                self.received_bytes += len(chunk)
        except OSError as exc:
            self.error = f"recv: {exc!r}"


class CounterWatch(threading.Thread):
    """Scrapes /stats every 200 ms; records any counter that went down."""

    def __init__(self, admin: int) -> None:
        super().__init__(daemon=True)
        self.admin = admin
        self.stop = threading.Event()
        self.scrapes = 0
        self.decreases: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        last: dict[str, int] = {}
        while not self.stop.wait(0.2):
            try:
                status, body = get(self.admin, "/stats?format=json&type=Counters")
            except OSError as exc:
                self.errors.append(repr(exc))
                continue
            if status != 200:
                self.errors.append(f"HTTP {status}")
                continue
            values = {s["name"]: s["value"] for s in json.loads(body)["stats"] if "name" in s}
            for name, value in values.items():
                if value < last.get(name, 0):
                    self.decreases.append(f"{name}: {last[name]} -> {value}")
            last.update(values)
            self.scrapes += 1


def test_five_reloads_under_load_drop_nothing(start_proxy: StartProxy, start_upstream: StartUpstream,
                                             tmp_path: Path) -> None:
    upstream = start_upstream(echo_handler)
    admin, port = free_port(), free_port()
    # The first generation holds the streams to the end: its drain time must outlast five
    # reloads, which take a minute or more on a loaded 2-core CI host.
    _proxy, _config, pid_file = start(start_proxy, tmp_path, config_for(admin, upstream, port),
                                      drain=600, shutdown=900)
    streams = [Stream(port) for _ in range(20)]
    shorts = [ShortConnections(port) for _ in range(2)]
    watch = CounterWatch(admin)
    for thread in (*streams, *shorts, watch):
        thread.start()
    pids = [read_pid(pid_file)]
    for _ in range(5):
        time.sleep(0.5)
        pids.append(reload_and_wait(pid_file, admin))
    time.sleep(0.5)
    for thread in (*shorts, watch):
        thread.stop.set()
    for stream in streams:
        stream.stop.set()
    for thread in (*streams, *shorts, watch):
        thread.join(30)

    assert len(set(pids)) == 6, pids
    assert [s.failures for s in shorts] == [[], []]
    assert sum(s.done for s in shorts) > 50
    for stream in streams:
        assert stream.error is None, stream.error
        assert stream.received_bytes == stream.sent_bytes > 0
        assert stream.received.hexdigest() == stream.sent.hexdigest()
    assert watch.decreases == []
    assert watch.errors == []
    assert watch.scrapes > 10
    info = server_info(admin)
    assert info["hot_restart_epoch"] == 5
    status, stats = get(admin, "/stats?filter=^server\\.hot_restart_successes$")
    # Counters continue across generations: every epoch's successes are kept.
    assert status == 200 and stats.strip() == "server.hot_restart_successes: 5"


def test_reload_adds_and_removes_listeners(start_proxy: StartProxy, start_upstream: StartUpstream,
                                          tmp_path: Path) -> None:
    upstream = start_upstream(echo_handler)
    admin, old_port, new_port = free_port(), free_port(), free_port()
    config = admin_config(admin, upstream.port, {"a": old_port})
    _proxy, config_path, pid_file = start(start_proxy, tmp_path, config, drain=1, shutdown=5)
    write_yaml(config_path, admin_config(admin, upstream.port, {"b": new_port}))
    reload_and_wait(pid_file, admin)
    with socket.create_connection((LOCALHOST, new_port), timeout=5) as sock:
        sock.sendall(b"new")
        assert sock.recv(3) == b"new"

    def refused() -> bool:
        try:
            socket.create_connection((LOCALHOST, old_port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, 15, "the removed listener refusing connections")
    assert "b::" in get(admin, "/listeners")[1] and "a::" not in get(admin, "/listeners")[1]


def test_broken_config_changes_nothing(start_proxy: StartProxy, start_upstream: StartUpstream,
                                      tmp_path: Path) -> None:
    upstream = start_upstream(echo_handler)
    admin, port = free_port(), free_port()
    proxy, config_path, pid_file = start(start_proxy, tmp_path, config_for(admin, upstream, port))
    good = config_path.read_text()
    config_path.write_text(good.replace("port_value", "port_valu", 1))
    os.kill(proxy.pid, signal.SIGHUP)
    wait_for(lambda: server_info(admin)["last_hot_restart"]["result"] == "failure", 30, "the failed reload")
    info = server_info(admin)
    assert "port_valu" in info["last_hot_restart"]["detail"]
    assert info["hot_restart_epoch"] == 0 and info["state"] == "LIVE"
    assert read_pid(pid_file) == proxy.pid
    assert get(admin, "/stats?filter=hot_restart_failures")[1].strip() == "server.hot_restart_failures: 1"
    with socket.create_connection((LOCALHOST, port), timeout=5) as sock:
        sock.sendall(b"still")
        assert sock.recv(5) == b"still"
    config_path.write_text(good)  # fixed: the next reload works
    reload_and_wait(pid_file, admin)


def test_sd_notify_sequence(start_proxy: StartProxy, start_upstream: StartUpstream,
                            tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.settimeout(20)
    upstream = start_upstream(echo_handler)
    admin, port = free_port(), free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    proxy, config_path, pid_file = start(start_proxy, tmp_path, config_for(admin, upstream, port),
                                         env=env)

    def next_message() -> dict[str, str]:
        fields = receiver.recv(4096).decode().split("\n")
        return dict(f.split("=", 1) for f in fields)

    first = next_message()
    assert first["READY"] == "1" and "MAINPID" not in first
    os.kill(proxy.pid, signal.SIGHUP)
    reloading = next_message()
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    ready = next_message()
    new_pid = wait_for(lambda: (p := read_pid(pid_file)) != proxy.pid and p, 10, "new pid file")
    assert ready["READY"] == "1" and ready["MAINPID"] == str(new_pid)
    config_path.write_text("not: [valid")
    os.kill(new_pid, signal.SIGHUP)
    assert next_message()["RELOADING"] == "1"
    failed = next_message()
    assert failed["READY"] == "1" and "MAINPID" not in failed and "failed" in failed["STATUS"]
    receiver.close()


def test_changed_code_on_disk_runs_after_sighup(start_proxy: StartProxy, start_upstream: StartUpstream,
                                               tmp_path: Path) -> None:
    install = tmp_path / "install"
    for package in ("meshproxy", "workers", "filters", "stats_shm"):
        shutil.copytree(REPO_ROOT / package, install / package, ignore=shutil.ignore_patterns("__pycache__"))
    upstream = start_upstream(echo_handler)
    admin, port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _proxy, _config, pid_file = start(start_proxy, tmp_path, config_for(admin, upstream, port),
                                      cwd=install, env=env)
    before = server_info(admin)["version"]
    init = install / "meshproxy" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+'))
    reload_and_wait(pid_file, admin)
    after = server_info(admin)["version"]
    assert before != after and after.startswith("meshproxy/9.9.9+")


def test_signals_sent_to_workers_restart_nothing(start_proxy: StartProxy, start_upstream: StartUpstream,
                                                tmp_path: Path) -> None:
    upstream = start_upstream(echo_handler)
    admin, port = free_port(), free_port()
    proxy, _config, pid_file = start(start_proxy, tmp_path, config_for(admin, upstream, port))
    workers = proxy.worker_pids()
    for pid in workers:
        os.kill(pid, signal.SIGHUP)
        os.kill(pid, signal.SIGINT)
    time.sleep(1.0)
    assert proxy.worker_pids() == workers
    assert read_pid(pid_file) == proxy.pid
    assert server_info(admin)["hot_restart_epoch"] == 0


def test_sigusr1_reopens_the_log_file(start_proxy: StartProxy, start_upstream: StartUpstream,
                                     tmp_path: Path) -> None:
    upstream = start_upstream(echo_handler)
    admin, port = free_port(), free_port()
    log_path = tmp_path / "meshproxy-file.log"
    config_path = write_yaml(tmp_path / "meshproxy.yaml", config_for(admin, upstream, port))
    # Logs go to the file, so the harness cannot watch them: wait on the admin endpoint instead.
    proxy = start_proxy(None, config_args=["-c", str(config_path)], extra_args=["--log-path", str(log_path)],
                        wait=False)
    wait_for(lambda: _ready(admin), 20, "admin /ready")
    assert "all 2 workers ready" in log_path.read_text()
    log_path.rename(tmp_path / "meshproxy-file.log.1")
    os.kill(proxy.pid, signal.SIGUSR1)
    time.sleep(0.3)
    os.kill(proxy.worker_pids()[0], signal.SIGKILL)  # something for the main process to log
    wait_for(lambda: log_path.exists() and "exited unexpectedly" in log_path.read_text(), 10,
             "a log line in the reopened file")
    assert "exited unexpectedly" not in (tmp_path / "meshproxy-file.log.1").read_text()


def _ready(admin: int) -> bool:
    try:
        return get(admin, "/ready")[0] == 200
    except OSError:
        return False


def _echoed(port: int) -> bool:
    try:
        with socket.create_connection((LOCALHOST, port), timeout=5) as sock:
            sock.sendall(b"x")
            return sock.recv(1) == b"x"
    except OSError:
        return False


def test_local_rate_limit_bucket_carries_over_a_reload(start_proxy: StartProxy, start_upstream: StartUpstream,
                                                       tmp_path: Path) -> None:
    upstream = start_upstream(echo_handler)
    admin, port = free_port(), free_port()
    limiter = {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "edge", "token_bucket": {"max_tokens": 6, "fill_interval": "3600s"}}}
    config = bootstrap([listener("main", port, limiter, tcp_proxy_filter("backend"))],
                       [static_cluster("backend", [upstream.port])])
    config["admin"] = {"address": socket_address(admin)}
    _proxy, _config, pid_file = start(start_proxy, tmp_path, config)  # the readiness probe takes 1 token
    assert [_echoed(port) for _ in range(3)] == [True, True, True]
    reload_and_wait(pid_file, admin)
    # The new generation uses the same host-wide bucket: 2 tokens left, not a fresh 6.
    assert [_echoed(port) for _ in range(4)] == [True, True, False, False]
