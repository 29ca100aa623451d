"""Integration harness: a real meshproxy process and small upstream servers, all on 127.0.0.1.

``MeshProxy`` writes an Envoy v3 bootstrap YAML, starts ``python -m meshproxy`` in its own
session (so teardown can kill the main process and its workers as one group), and waits
until every listener accepts connections and every worker sits in its event loop. The
listener ports are read from the main process's own log line
(``listener 'x' on ('127.0.0.1', 12345)``), which also makes ``port_value: 0`` usable.

Readiness is checked with one probe connection per listener that opens and closes
without a byte; behind a tcp_proxy listener that reaches the upstream as an empty
connection, which every upstream handler here ignores.

``Upstream`` is a threaded TCP server whose connections each run a plain blocking
``handler(sock)``; handlers here cover echo, "reply with my name" and "push N bytes".
Everything is bounded: sockets carry timeouts, waits have deadlines, and servers stop
themselves at teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
MiB = 1024 * 1024
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ECHO_TYPE = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"

# Generous bounds for a loaded 2-core CI machine; every wait polls and returns early.
STARTUP_TIMEOUT_S = 15.0
IO_TIMEOUT_S = 20.0

_LISTENER_LINE = re.compile(r"listener '([^']*)' on \('([^']*)', (\d+)")
_WORKER_LINE = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def free_port() -> int:
    """A port that was free a moment ago (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# ----- config builders (Envoy v3 bootstrap form) ------------------------------------------------


def socket_address(port: int, address: str = LOCALHOST) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def tcp_proxy_filter(cluster: str | None = None, *, stat_prefix: str = "tcp",
                     **fields: Any) -> dict[str, Any]:
    typed: dict[str, Any] = {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix}
    if cluster is not None:
        typed["cluster"] = cluster
    typed.update(fields)
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": typed}


def echo_filter() -> dict[str, Any]:
    return {"name": "envoy.filters.network.echo", "typed_config": {"@type": ECHO_TYPE}}


def listener(name: str, port: int, *filters: dict[str, Any], **fields: Any) -> dict[str, Any]:
    chains = [{"filters": list(filters)}]
    return {"name": name, "address": socket_address(port), "filter_chains": chains, **fields}


def static_cluster(name: str, ports: Sequence[int], *, connect_timeout: str = "1s",
                   **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(p)}} for p in ports]}],
        },
        **fields,
    }


def bootstrap(listeners: Sequence[dict[str, Any]], clusters: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"static_resources": {"listeners": list(listeners), "clusters": list(clusters)}}


def proxy_config(upstream_port: int, *, name: str = "main", listener_fields: dict[str, Any] | None = None,
                 cluster_fields: dict[str, Any] | None = None, **tcp_fields: Any) -> dict[str, Any]:
    """One tcp_proxy listener on an ephemeral port in front of one upstream."""
    return bootstrap(
        [listener(name, 0, tcp_proxy_filter("backend", **tcp_fields), **(listener_fields or {}))],
        [static_cluster("backend", [upstream_port], **(cluster_fields or {}))],
    )


def write_yaml(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# ----- /proc ------------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (``task/<pid>/children``, else a scan of PPid)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except FileNotFoundError:
        pass
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                status = (entry / "status").read_text()
                if re.search(rf"^PPid:\s+{pid}$", status, re.M):
                    children.append(int(entry.name))
    return children


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_alive(pid: int) -> bool:
    """Running or sleeping: a zombie has already died."""
    return process_state(pid) not in (None, "Z", "X")


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _in_event_loop(pid: int) -> bool:
    """The process is alive and blocked in epoll_wait: its event loop is up and idle."""
    if not is_alive(pid):
        return False
    try:
        return "epoll" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return True  # no wchan on this kernel: nothing better to wait on


# ----- meshproxy ----------------------------------------------------------------------------------


_base_ids = itertools.count(os.getpid() % 5000 * 100 + 1000)


def next_base_id() -> int:
    return next(_base_ids)


class MeshProxy:
    """One ``python -m meshproxy`` process (main + forked workers) for one test.

    ``config`` is a bootstrap mapping (written to ``<workdir>/<name>.yaml``), or ``None``
    when ``config_args`` already name the config (``-c dir/``, ``--config-yaml``...).
    """

    def __init__(self, workdir: Path, config: dict[str, Any] | None, *, concurrency: int = 2,
                 drain_time_s: float = 5.0, config_args: Sequence[str] = (), extra_args: Sequence[str] = (),
                 name: str = "meshproxy", base_id: int | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.cwd = cwd or REPO_ROOT
        self.env = env
        # A base id of its own, so concurrent proxies (and a developer's) never share a stats segment.
        self.base_id = next_base_id() if base_id is None else base_id
        self.concurrency = concurrency
        self.log_path = workdir / f"{name}.log"
        args = list(config_args)
        if config is not None:
            self.config_path: Path | None = write_yaml(workdir / f"{name}.yaml", config)
            args = ["-c", str(self.config_path), *args]
        else:
            self.config_path = None
        self.argv = [sys.executable, "-m", "meshproxy", *args, "--concurrency", str(concurrency),
                     "--drain-time-s", str(drain_time_s), "--base-id", str(self.base_id), "-l", "debug",
                     *extra_args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    # ----- lifecycle ------------------------------------------------------------------------

    def start(self, wait: bool = True) -> MeshProxy:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Every worker forked and idle in its loop, and every listener port accepting."""
        deadline = time.monotonic() + timeout

        def check_running() -> None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"meshproxy exited with code {self.proc.returncode} during startup\n"
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"meshproxy not ready after {timeout:.0f}s\n{self.log_tail()}")

        while len(_WORKER_LINE.findall(self.log())) < self.concurrency:
            check_running()
            time.sleep(0.02)
        self.ports = {name: int(port) for name, _addr, port in _LISTENER_LINE.findall(self.log())}
        while True:
            workers = self.worker_pids()
            if len(workers) == self.concurrency and all(map(_in_event_loop, workers)):
                break
            check_running()
            time.sleep(0.02)
        for port in self.ports.values():
            while True:
                check_running()
                try:
                    socket.create_connection((LOCALHOST, port), timeout=1.0).close()
                    break
                except OSError:
                    time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        """The port of the only listener."""
        assert len(self.ports) == 1, self.ports
        return next(iter(self.ports.values()))

    def worker_pids(self) -> list[int]:
        return child_pids(self.pid)

    def rss_kib(self, pid: int) -> int:
        return rss_kib(pid)

    def workers_rss_kib(self) -> int:
        return sum(rss_kib(p) for p in self.worker_pids())

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"meshproxy still running after {timeout:.1f}s\n{self.log_tail()}") from None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait for the exit, return its code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the main process and every worker (the whole session's group)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.remove_stats_segment()

    def remove_stats_segment(self) -> None:
        """A killed proxy cannot remove its shared-memory segment; the test does."""
        for suffix in ("", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/meshproxy_stats_{self.base_id}{suffix}")

    # ----- log ----------------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"--- {self.log_path} (last {lines} lines) ---\n{tail}\n--- end of log ---"

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``pattern`` (a regex) matches ``count`` times in the log."""
        regex = re.compile(pattern)
        try:
            wait_for(lambda: len(regex.findall(self.log())) >= count, timeout, f"log /{pattern}/ x{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None


# ----- upstream servers ---------------------------------------------------------------------------


Handler = Callable[[socket.socket], None]


class Upstream:
    """A TCP server on 127.0.0.1: each accepted connection runs ``handler(sock)`` in its own thread."""

    def __init__(self, handler: Handler, *, backlog: int = 1024, sock: socket.socket | None = None) -> None:
        self.handler = handler
        self.sock = sock or socket.create_server((LOCALHOST, 0), backlog=backlog)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"upstream-{self.port}", daemon=True)
        self._acceptor.start()

    @property
    def active(self) -> int:
        """Connections whose handler is still running."""
        with self._lock:
            return len(self._conns)

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT_S)
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self.accepted += 1
                self._conns.add(conn)
                thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError as exc:  # a peer that went away mid-test is the test's business, not ours
            if not self._closing:
                self.errors.append(exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        for thread in threads:
            thread.join(5)


def echo_handler(conn: socket.socket) -> None:
    """Echo everything; half-close after the peer's EOF."""
    while data := conn.recv(256 * 1024):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def name_handler(name: bytes) -> Handler:
    """Read the client's first bytes, answer ``name`` and close."""

    def handle(conn: socket.socket) -> None:
        if conn.recv(1024):
            conn.sendall(name)

    return handle


class Blackhole:
    """A listening socket whose accept queue is full and never drained.

    On Linux a SYN to a full accept queue is dropped, so a connect() to it hangs until the
    client gives up: the way to make an upstream connect time out without a firewall.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server((LOCALHOST, 0), backlog=0)
        self.port = int(self.sock.getsockname()[1])
        self._fillers: list[socket.socket] = []
        for _ in range(16):
            probe = socket.socket()
            probe.setblocking(False)
            probe.connect_ex((LOCALHOST, self.port))
            _, writable, _ = select.select([], [probe], [], 0.2)
            if not writable:  # this SYN hangs: the queue is full
                probe.close()
                return
            self._fillers.append(probe)
        self.close()
        raise AssertionError("could not fill a listen queue: connects never hang on this kernel")

    def close(self) -> None:
        for sock in self._fillers:
            sock.close()
        self.sock.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----- clients ------------------------------------------------------------------------------------


def connect(port: int, timeout: float = IO_TIMEOUT_S) -> socket.socket:
    sock = socket.create_connection((LOCALHOST, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def admin_stats(admin_port: int) -> dict[str, int]:
    """Every counter and gauge from the admin endpoint's ``/stats?format=json``, by name."""
    url = f"http://{LOCALHOST}:{admin_port}/stats?format=json"
    with urllib.request.urlopen(url, timeout=5) as response:
        return {s["name"]: s["value"] for s in json.loads(response.read())["stats"] if "name" in s}


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return recv_exactly(sock, len(data))


def time_until_closed(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closes ``sock`` (EOF or reset); AssertionError if it stays open."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"connection still open after {timeout:.1f}s") from None
    return time.monotonic() - start


def stream_through(port: int, payload: bytes, chunk: int = 256 * 1024) -> tuple[int, str]:
    """Send ``payload`` (then half-close) while reading concurrently until EOF.

    Returns (bytes received, their sha256). The sender runs in a thread so that large
    payloads cannot deadlock against the proxy's flow control.
    """
    sock = connect(port)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            view = memoryview(payload)
            for i in range(0, len(view), chunk):
                sock.sendall(view[i:i + chunk])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            failure.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    digest, total = hashlib.sha256(), 0
    try:
        while data := sock.recv(1 << 20):
            digest.update(data)
            total += len(data)
    finally:
        sender.join(IO_TIMEOUT_S)
        sock.close()
    if failure:
        raise failure[0]
    return total, digest.hexdigest()
