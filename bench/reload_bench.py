#!/usr/bin/env python3
"""Hot restart under load: meshproxy's SIGHUP reload against HAProxy's master-worker reload.

Issue 4 asks: for 10 reloads under wrk and redis-benchmark load, how many requests and
connections fail (target: 0), how long a reload takes (signal -> new generation READY) and
how much memory the processes take while generations overlap, next to an HAProxy reload
under the same load in the same run. This script measures exactly that, on 127.0.0.1.

Backends (started once): nginx serving a 615-byte static file over HTTP, and a
redis-server without persistence. Each target then runs in turn with two listeners in
front of them (HTTP -> nginx, RESP -> redis), plain TCP proxying:

* ``meshproxy``: ``python -m meshproxy --concurrency 2`` with two tcp_proxy listeners and an
  admin address. Reload = SIGHUP to the main PID; the new generation says ``MAINPID=`` and
  ``READY=1`` on ``$NOTIFY_SOCKET`` (a datagram socket this script binds) and rewrites the
  pid file; the next SIGHUP goes to the new PID.
* ``haproxy``: ``haproxy -Ws`` (master-worker with sd_notify), ``nbthread 2``, ``mode tcp``,
  ``stats socket ... expose-fd listeners``. Reload = SIGUSR2 to the master, which re-executes
  itself and forks a new worker that takes the listening sockets over its socketpair
  (``-x sockpair@``); the master says ``READY=1`` once that worker reports it is up.
  Old workers keep their connections until the clients close them (HAProxy's default).
* ``haproxy-hard-stop``: the same with ``hard-stop-after`` = meshproxy's ``--drain-time-s``,
  i.e. the same bound on how long an old process may keep a connection.

Load on each target, for the same window: ``wrk -t2 -c50`` (keep-alive; nginx allows
unlimited requests per connection, so wrk's connections live as long as the proxy lets
them), ``redis-benchmark -c 20 -t set,get`` restarted whenever it dies (it exits on the
first connection error; each death is an error, timestamped), and a probe opening one new
HTTP connection every 20 ms (one request, ``Connection: close``) that timestamps every
failure: it shows whether new connections are refused or reset around a hand-over.

After a warm-up, ``--reloads`` reloads are sent, one every ``--interval`` seconds (never
before the previous one is READY), then the load goes on for ``--drain-time-s`` + 2 s so
that the drain deadline of the last old generation falls inside the window. Memory: every
100 ms the VmRSS (and PSS, which splits shared pages fairly) of every process of the
target, all generations, is summed; the peak is reported.

Every failure is placed on the timeline: after which reload signal, whether that reload
was still in progress, and whether it falls at a drain deadline (an old generation's READY
+ drain time), which tells a hand-over failure from a connection cut at the end of a drain.
The report goes to stdout and to ``bench/out/reload_bench/last-run.md``, with the proxies'
logs and wrk's output next to it.

Processes: everything is started here in its own session and stopped here by PID (SIGTERM,
then SIGKILL after checking the PID still names the same process). Every wait is bounded.
Missing tools are installed with apt-get (CI machines start clean).

    python bench/reload_bench.py                  # 10 reloads per target, about 2 minutes
    python bench/reload_bench.py --quick          # 2 reloads per target, < 1 minute
    python bench/reload_bench.py --record         # also append the figures to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import benchlib
import yaml

REPO: Final = Path(__file__).resolve().parent.parent
OUT: Final = REPO / "bench" / "out" / "reload_bench"
RESULTS: Final = REPO / "bench" / "RESULTS.md"
TARGETS: Final = ("meshproxy", "haproxy", "haproxy-hard-stop")
APT_PACKAGES: Final = {"wrk": "wrk", "nginx": "nginx", "haproxy": "haproxy",
                       "redis-server": "redis-server", "redis-benchmark": "redis-tools"}
WRK_THREADS: Final = 2
WRK_CONNECTIONS: Final = 50
REDIS_CLIENTS: Final = 20
PROBE_EVERY_S: Final = 0.02
SAMPLE_EVERY_S: Final = 0.1
READY_TIMEOUT_S: Final = 30.0  # a reload (or a start) not READY by then counts as failed
STOP_TIMEOUT_S: Final = 20.0
# A failure this close to a drain deadline (an old generation's READY + drain time) is put there.
NEAR_S: Final = 0.5
PAGE: Final = "<html><body>" + "meshproxy reload benchmark. " * 21 + "</body></html>\n"  # 615 bytes


# ----- tools and machine ----------------------------------------------------------------


def ensure_tools() -> None:
    """Install the Debian packages of missing tools; ``apt-get update`` only when needed."""
    benchlib.apt_install(benchlib.missing_packages(APT_PACKAGES))


def machine_lines() -> list[str]:
    return benchlib.machine_lines({
        "haproxy": ["haproxy", "-v"], "nginx": ["nginx", "-v"], "redis": ["redis-server", "--version"],
        "wrk": ["wrk", "-v"]})


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ----- processes ------------------------------------------------------------------------


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (identity across PID reuse); None once it is gone
    or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def children(pid: int) -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids.extend(int(p) for p in (task / "children").read_text().split())
    return pids


def process_tree(roots: list[int]) -> set[int]:
    """``roots`` that are alive and all their descendants."""
    seen: set[int] = set()
    stack = [pid for pid in roots if start_time(pid) is not None]
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(children(pid))
    return seen


def stop_pids(pids: dict[int, str | None], signum: int, timeout: float) -> list[int]:
    """Signal each PID that still names the process we knew, wait up to ``timeout`` for all of
    them to go; returns those still there."""
    def alive() -> list[int]:
        return [pid for pid, born in pids.items() if born is not None and start_time(pid) == born]
    for pid in alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    deadline = time.monotonic() + timeout
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class Spawned:
    """A long-running process started here, in its own session, with its output in a log."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, cwd=cwd or log.parent, env=env,
                                          start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, extra_roots: tuple[int, ...] = ()) -> None:
        """SIGTERM this process, its descendants and ``extra_roots`` (other generations), then
        SIGKILL whatever is left; reap our own child."""
        tree = process_tree([self.popen.pid, *extra_roots])
        known = {pid: start_time(pid) for pid in tree}
        roots = {pid: born for pid, born in known.items() if pid in (self.popen.pid, *extra_roots)}
        stop_pids(roots, signal.SIGTERM, STOP_TIMEOUT_S)
        self.popen.poll()
        left = stop_pids(known, signal.SIGKILL, 5.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        if left:
            print(f"  {self.name}: PIDs {left} did not exit", flush=True)


# ----- sockets --------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now (bound together so they differ; freed on return)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def http_get(port: int, timeout: float = 2.0) -> str:
    """One request on a new connection; '' on success, else what went wrong."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
    except OSError as exc:
        return type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
    if not reply.startswith(b"HTTP/1.1 200"):
        return f"bad reply: {reply[:40]!r}"
    if not reply.endswith(PAGE.encode()):
        return f"short reply ({len(reply)} bytes)"
    return ""


def redis_command(port: int, command: bytes, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(command)
        reply = s.recv(65536)
        if reply.startswith(b"$"):  # a bulk string: read all of it
            size = int(reply[1:reply.index(b"\r\n")])
            while len(reply) < size + len(str(size)) + 5:
                reply += s.recv(65536)
        return reply


def redis_ok(port: int) -> bool:
    try:
        return redis_command(port, b"PING\r\n").startswith(b"+PONG")
    except OSError:
        return False


def redis_commands_processed(port: int) -> int:
    reply = redis_command(port, b"INFO stats\r\n").decode(errors="replace")
    match = re.search(r"total_commands_processed:(\d+)", reply)
    return int(match.group(1)) if match else 0


def wait_for(check: Callable[[], bool], what: str, spawned: Spawned,
             timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not spawned.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{spawned.name}: {what} failed\n{spawned.log_tail()}")
        time.sleep(0.05)


class NotifySocket:
    """What ``$NOTIFY_SOCKET`` receives: systemd's notify protocol, one datagram per message."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def flush(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(4096)

    def wait_ready(self, timeout: float) -> tuple[float, dict[str, str]] | None:
        """The arrival time and fields of the next message carrying ``READY=1``; None on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return None
            now = time.monotonic()
            lines = data.decode(errors="replace").splitlines()
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            if fields.get("READY") == "1":
                return now, fields
        return None

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


# ----- backends -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backends:
    http_port: int
    redis_port: int


def nginx_config(workdir: Path, port: int) -> str:
    # Unlimited requests per keep-alive connection: a wrk connection then lives as long as
    # the proxy in front lets it, the hardest case for a reload that drains.
    return (f"worker_processes 1;\ndaemon off;\npid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/nginx-error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n    access_log off;\n    keepalive_requests 100000000;\n    keepalive_timeout 120s;\n"
            f"    server {{ listen 127.0.0.1:{port}; root {workdir}/www; }}\n}}\n")


def start_backends(workdir: Path, started: list[Spawned]) -> Backends:
    """nginx and redis-server on new ports; each process is added to ``started`` at once, so
    the caller stops it even if a later step fails."""
    http_port, redis_port = free_ports(2)
    www = workdir / "www"
    www.mkdir()
    (www / "index.html").write_text(PAGE)
    for path in (workdir, www):  # nginx's workers run as nobody
        path.chmod(0o755)
    (workdir / "nginx.conf").write_text(nginx_config(workdir, http_port))
    nginx = Spawned("nginx", ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                              "-e", str(workdir / "nginx-error.log")], workdir / "nginx.log")
    started.append(nginx)
    redis = Spawned("redis-server", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                    workdir / "redis.log")
    started.append(redis)
    wait_for(lambda: http_get(http_port) == "", "serving HTTP", nginx)
    wait_for(lambda: redis_ok(redis_port), "answering PING", redis)
    return Backends(http_port, redis_port)


# ----- proxies --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reload:
    """One reload: when the signal went, when READY came (None: never), and what failed."""

    signal_at: float
    ready_at: float | None
    detail: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.signal_at


class Proxy:
    """A proxy under test: ``start``, ``reload`` (one at a time), ``pids`` (every process of every
    generation), ``stop``. ``drain_deadline_s``: how long an old generation may keep a
    connection after the hand-over (None: until the client closes it)."""

    name: str
    drain_deadline_s: float | None

    def __init__(self, workdir: Path, backends: Backends) -> None:
        self.workdir = workdir
        self.http_port, self.redis_port = free_ports(2)
        self.backends = backends
        self.notify = NotifySocket(workdir / f"{self.name}.notify")
        self.env = {**os.environ, "NOTIFY_SOCKET": self.notify.path}
        self.process: Spawned | None = None

    def start(self) -> None:
        raise NotImplementedError

    def reload(self) -> Reload:
        raise NotImplementedError

    def pids(self) -> set[int]:
        return process_tree([self.process.popen.pid]) if self.process else set()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.notify.close()

    def _await_started(self) -> None:
        assert self.process is not None
        process = self.process
        if self.notify.wait_ready(READY_TIMEOUT_S) is None:
            raise RuntimeError(f"{self.name}: no READY=1 within {READY_TIMEOUT_S:.0f}s\n{process.log_tail()}")
        wait_for(lambda: http_get(self.http_port) == "", "relaying HTTP", process)
        wait_for(lambda: redis_ok(self.redis_port), "relaying redis", process)


def meshproxy_config(routes: dict[str, tuple[int, int]], admin_port: int) -> dict[str, object]:
    """The tcp_proxy routes (benchlib.tcp_proxy_bootstrap) and an admin endpoint."""
    admin = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    return {"admin": admin, **benchlib.tcp_proxy_bootstrap(routes)}


class MeshProxy(Proxy):
    name = "meshproxy"

    def __init__(self, workdir: Path, backends: Backends, drain_time_s: float,
                 parent_shutdown_s: float, log_level: str) -> None:
        super().__init__(workdir, backends)
        self.log_level = log_level
        self.drain_deadline_s = drain_time_s
        self.parent_shutdown_s = parent_shutdown_s
        self.pid_file = workdir / "meshproxy.pid"
        self.mains: list[int] = []  # every generation's main PID, oldest first

    def start(self) -> None:
        (admin_port,) = free_ports(1)
        routes = {"http": (self.http_port, self.backends.http_port),
                  "redis": (self.redis_port, self.backends.redis_port)}
        config = self.workdir / "meshproxy.yaml"
        config.write_text(yaml.safe_dump(meshproxy_config(routes, admin_port), sort_keys=False))
        argv = [sys.executable, "-m", "meshproxy", "-c", str(config), "--concurrency", "2",
                "--pid-file", str(self.pid_file), "--drain-time-s", f"{self.drain_deadline_s:g}",
                "--parent-shutdown-time-s", f"{self.parent_shutdown_s:g}", "-l", self.log_level,
                "--base-id", str(7000 + os.getpid() % 1000)]
        self.process = Spawned(self.name, argv, self.workdir / "meshproxy.log", env=self.env, cwd=REPO)
        self.mains.append(self.process.popen.pid)
        self._await_started()

    def reload(self) -> Reload:
        old = self.mains[-1]
        self.notify.flush()
        signal_at = time.monotonic()
        os.kill(old, signal.SIGHUP)
        ready = self.notify.wait_ready(READY_TIMEOUT_S)
        if ready is None:
            return Reload(signal_at, None, f"no READY=1 within {READY_TIMEOUT_S:.0f}s")
        ready_at, fields = ready
        new = int(fields.get("MAINPID", "0") or 0)
        if not new or new == old:  # the old generation says READY again: the reload failed
            return Reload(signal_at, None, fields.get("STATUS", "READY=1 without a new MAINPID"))
        self.mains.append(new)
        if not self._pid_file_names(new):
            return Reload(signal_at, ready_at, f"pid file does not name {new}")
        return Reload(signal_at, ready_at)

    def _pid_file_names(self, pid: int, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if int(self.pid_file.read_text().strip()) == pid:
                    return True
            time.sleep(0.02)
        return False

    def pids(self) -> set[int]:
        # A generation is a child of the one before; once that one exits, it is re-parented
        # away from us, so every generation's main PID is a root of its own.
        if self.process is not None:
            self.process.popen.poll()  # reap the first generation once it exits
        return process_tree(self.mains)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(extra_roots=tuple(self.mains[1:]))
        self.notify.close()


def haproxy_config(routes: dict[str, tuple[int, int]], stats_socket: Path, hard_stop_s: float | None) -> str:
    lines = ["global", "    nbthread 2", "    maxconn 4096",
             f"    stats socket {stats_socket} mode 600 level admin expose-fd listeners"]
    if hard_stop_s is not None:
        lines.append(f"    hard-stop-after {hard_stop_s * 1000:.0f}ms")
    lines += ["", "defaults", "    mode tcp", "    timeout connect 5s", "    timeout client 120s",
              "    timeout server 120s", ""]
    for name, (listen, upstream) in routes.items():
        lines += [f"listen {name}", f"    bind 127.0.0.1:{listen}",
                  f"    server {name} 127.0.0.1:{upstream}", ""]
    return "\n".join(lines)


class HAProxy(Proxy):
    def __init__(self, workdir: Path, backends: Backends, hard_stop_s: float | None) -> None:
        self.name = "haproxy" if hard_stop_s is None else "haproxy-hard-stop"
        super().__init__(workdir, backends)
        self.drain_deadline_s = hard_stop_s
        self.master_socket = workdir / f"{self.name}-master.sock"

    def start(self) -> None:
        routes = {"http": (self.http_port, self.backends.http_port),
                  "redis": (self.redis_port, self.backends.redis_port)}
        config = self.workdir / f"{self.name}.cfg"
        stats_socket = self.workdir / f"{self.name}-stats.sock"
        config.write_text(haproxy_config(routes, stats_socket, self.drain_deadline_s))
        argv = ["haproxy", "-Ws", "-S", str(self.master_socket), "-f", str(config)]
        self.process = Spawned(self.name, argv, self.workdir / f"{self.name}.log", env=self.env)
        self._await_started()

    def reload(self) -> Reload:
        assert self.process is not None
        before = self.current_workers()
        self.notify.flush()
        signal_at = time.monotonic()
        os.kill(self.process.popen.pid, signal.SIGUSR2)
        ready = self.notify.wait_ready(READY_TIMEOUT_S)
        if ready is None:
            return Reload(signal_at, None, f"no READY=1 within {READY_TIMEOUT_S:.0f}s")
        after = self.current_workers()
        if after and after == before:
            return Reload(signal_at, ready[0], f"READY=1 but the workers are still {sorted(after)}")
        return Reload(signal_at, ready[0])

    def current_workers(self) -> set[int]:
        """The current (not leaving) workers, from the master CLI's ``show proc``; empty if unknown."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.master_socket))
                s.sendall(b"show proc\n")
                s.shutdown(socket.SHUT_WR)  # the master CLI answers, then closes
                text = b""
                while chunk := s.recv(65536):
                    text += chunk
        except OSError:
            return set()
        section = text.decode(errors="replace").split("# workers", 1)[-1].split("#", 1)[0]
        return {int(line.split()[0]) for line in section.splitlines() if line.strip()[:1].isdigit()}


# ----- load -----------------------------------------------------------------------------


@dataclass(slots=True)
class Failure:
    at: float
    client: str
    detail: str


class Wrk:
    """``wrk`` for the whole window: started with a long ``-d`` and stopped with SIGINT, on which
    it prints its summary as usual."""

    def __init__(self, port: int, log: Path) -> None:
        self.log = log
        self.figures: dict[str, int] | None = None
        argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", "-d3600s", f"http://127.0.0.1:{port}/"]
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)

    def finish(self) -> dict[str, int]:
        """Stop wrk (once) and return its figures."""
        if self.figures is None:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGINT)
            try:
                out, _ = self.popen.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                out, _ = self.popen.communicate()
            self.log.write_text(out)
            self.figures = parse_wrk(out)
        return self.figures


def parse_wrk(text: str) -> dict[str, int]:
    """Requests and errors by kind from wrk's summary; ``requests`` -1 if there is none."""
    figures = {"requests": -1, "rps": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    if match := re.search(r"(\d+) requests in", text):
        figures["requests"] = int(match.group(1))
    if match := re.search(r"Requests/sec:\s+([\d.]+)", text):
        figures["rps"] = round(float(match.group(1)))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        for kind, value in zip(("connect", "read", "write", "timeout"), match.groups(), strict=True):
            figures[kind] = int(value)
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        figures["non2xx"] = int(match.group(1))
    return figures


class RedisLoad(threading.Thread):
    """``redis-benchmark`` for the whole window, started again whenever it exits early (it exits
    on the first connection error). Every early exit is a timestamped failure."""

    def __init__(self, port: int, workdir: Path) -> None:
        super().__init__(name="redis-load", daemon=True)
        self.port = port
        self.workdir = workdir
        self.stopping = threading.Event()
        self.failures: list[Failure] = []
        self.runs = 0

    def run(self) -> None:
        argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(self.port), "-c", str(REDIS_CLIENTS),
                "-n", "1000000000", "-t", "set,get", "-q"]
        while not self.stopping.is_set():
            self.runs += 1
            err = self.workdir / f"redis-benchmark-{self.runs}.err"
            with open(err, "wb") as err_file:
                popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err_file)
            while popen.poll() is None and not self.stopping.wait(0.02):
                pass
            if popen.poll() is None:  # the window ended: not a failure
                popen.kill()
                popen.wait()
                break
            lines = err.read_text(errors="replace").strip().splitlines()
            self.failures.append(Failure(time.monotonic(), "redis-benchmark",
                                         lines[-1] if lines else f"exit status {popen.returncode}"))
            self.stopping.wait(0.05)

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


class Probe(threading.Thread):
    """A new HTTP connection every ``PROBE_EVERY_S``: one GET, ``Connection: close``."""

    def __init__(self, port: int) -> None:
        super().__init__(name="probe", daemon=True)
        self.port = port
        self.stopping = threading.Event()
        self.attempts = 0
        self.failures: list[Failure] = []

    def run(self) -> None:
        while not self.stopping.wait(PROBE_EVERY_S):
            self.attempts += 1
            started = time.monotonic()
            if error := http_get(self.port):
                self.failures.append(Failure(started, "probe", error))

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


class MemorySampler(threading.Thread):
    """Every ``SAMPLE_EVERY_S``: the summed VmRSS and PSS of every process of the proxy."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(name="memory", daemon=True)
        self.proxy = proxy
        self.stopping = threading.Event()
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self.peak_processes = 0

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_EVERY_S):
            pids = self.proxy.pids()
            self.peak_processes = max(self.peak_processes, len(pids))
            rss = sum(proc_kib(pid, "status", "VmRSS:") for pid in pids)
            pss = sum(proc_kib(pid, "smaps_rollup", "Pss:") for pid in pids)
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def proc_kib(pid: int, name: str, key: str) -> int:
    """A ``key: N kB`` line of /proc/PID/NAME; 0 if the process is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# ----- one target -----------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """Everything measured on one target."""

    name: str
    idle_reloads: list[Reload] = field(default_factory=list)
    reloads: list[Reload] = field(default_factory=list)
    wrk: dict[str, int] = field(default_factory=dict)
    redis_requests: int = 0
    probe_attempts: int = 0
    failures: list[Failure] = field(default_factory=list)
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    peak_processes: int = 0
    window_s: float = 0.0
    load_average: str = ""
    drain_deadline_s: float | None = None
    error: str = ""


def make_proxy(name: str, workdir: Path, backends: Backends, args: argparse.Namespace) -> Proxy:
    if name == "meshproxy":
        return MeshProxy(workdir, backends, args.drain_time_s, args.parent_shutdown_time_s,
                         args.meshproxy_log_level)
    return HAProxy(workdir, backends, args.drain_time_s if name == "haproxy-hard-stop" else None)


def drive_reloads(proxy: Proxy, count: int, interval: float) -> list[Reload]:
    """``count`` reloads, one every ``interval`` s, each only after the previous one is READY."""
    reloads: list[Reload] = []
    next_at = time.monotonic()
    for number in range(1, count + 1):
        time.sleep(max(0.0, next_at - time.monotonic()))
        done = proxy.reload()
        reloads.append(done)
        shown = "FAILED" if done.seconds is None else f"{done.seconds:.3f}s"
        print(f"  reload {number}: {shown}{' (' + done.detail + ')' if done.detail else ''}", flush=True)
        next_at = max(done.signal_at + interval, time.monotonic() + 0.2)
    return reloads


def run_target(name: str, backends: Backends, args: argparse.Namespace, workdir: Path) -> Outcome:
    """Start the proxy, load it, reload it, stop it; the proxy's log is kept in bench/out/."""
    outcome = Outcome(name, load_average=load_average())
    proxy = make_proxy(name, workdir, backends, args)
    outcome.drain_deadline_s = proxy.drain_deadline_s
    loads: list[Wrk | RedisLoad | Probe | MemorySampler] = []
    try:
        proxy.start()
        outcome.idle_reloads = [proxy.reload() for _ in range(args.idle_reloads)]
        time.sleep(1.0)  # idle old generations have nothing to drain: they are gone by now
        sampler = MemorySampler(proxy)
        sampler.start()
        commands_before = redis_commands_processed(backends.redis_port)
        started = time.monotonic()
        wrk = Wrk(proxy.http_port, OUT / f"{name}-wrk.txt")
        redis, probe = RedisLoad(proxy.redis_port, workdir), Probe(proxy.http_port)
        loads = [wrk, redis, probe, sampler]
        redis.start()
        probe.start()
        time.sleep(args.warmup)
        outcome.reloads = drive_reloads(proxy, args.reloads, args.interval)
        time.sleep(args.drain_time_s + 2.0)
        outcome.wrk = wrk.finish()
        for thread in (redis, probe, sampler):
            thread.finish()
        outcome.window_s = time.monotonic() - started
        outcome.redis_requests = redis_commands_processed(backends.redis_port) - commands_before
        outcome.probe_attempts = probe.attempts
        outcome.failures = sorted(redis.failures + probe.failures, key=lambda f: f.at)
        outcome.peak_rss_kib, outcome.peak_pss_kib = sampler.peak_rss_kib, sampler.peak_pss_kib
        outcome.peak_processes = sampler.peak_processes
    except RuntimeError as exc:
        outcome.error = str(exc).splitlines()[0]
        print(f"  {name}: {exc}", flush=True)
    finally:
        for load in loads:
            with contextlib.suppress(Exception):
                load.finish()
        proxy.stop()
        if proxy.process is not None:
            shutil.copy(proxy.process.log, OUT / f"{name}.log")
    return outcome


# ----- report ---------------------------------------------------------------------------


def place(failure: Failure, outcome: Outcome) -> str:
    """Which drain deadline (an old generation's READY + drain time) a failure falls at, if any."""
    drain = outcome.drain_deadline_s
    deadlines = [number for number, reload in enumerate(outcome.reloads, 1)
                 if drain is not None and reload.ready_at is not None
                 and abs(failure.at - reload.ready_at - drain) <= NEAR_S]
    if not deadlines:
        return "not at a drain deadline"
    return " and ".join(f"at the drain deadline of the generation that reload {n} replaced"
                        for n in deadlines)


def when(failure: Failure, outcome: Outcome) -> str:
    """A failure's time against the last reload signal before it, and whether that reload was
    still in progress (signal..READY)."""
    before = [(n, r) for n, r in enumerate(outcome.reloads, 1) if r.signal_at <= failure.at]
    if not before:
        return "before reload 1"
    number, reload = before[-1]
    since = f"+{failure.at - reload.signal_at:.2f}s after reload {number}'s signal"
    if reload.ready_at is None:
        return f"{since} (that reload failed)"
    ready = reload.ready_at - reload.signal_at
    state = "in progress" if failure.at < reload.ready_at else "READY"
    return f"{since}, reload {state} (READY at +{ready:.2f}s)"


def timeline(outcome: Outcome) -> list[str]:
    """One line per failure: when it happened and which drain deadline it falls at."""
    return [f"{outcome.name}: {f.client} {when(f, outcome)}; {place(f, outcome)}: {f.detail}"
            for f in outcome.failures]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def summary_row(o: Outcome) -> list[str]:
    if o.error:
        return [o.name, "not measured: " + o.error, *[""] * 9]
    times = [r.seconds for r in o.reloads if r.seconds is not None]
    timing = f"{statistics.median(times):.2f} / {max(times):.2f}" if times else "n/a"
    idle = [r.seconds for r in o.idle_reloads if r.seconds is not None]
    idle_timing = f"{statistics.median(idle):.2f}" if idle else "n/a"
    wrk = o.wrk
    wrk_errors = (f"{wrk['connect']}/{wrk['read']}/{wrk['write']}/{wrk['timeout']}/{wrk['non2xx']}"
                  if wrk.get("requests", -1) >= 0 else "no summary")
    redis_errors = sum(1 for f in o.failures if f.client == "redis-benchmark")
    probe_errors = sum(1 for f in o.failures if f.client == "probe")
    redis_rps = o.redis_requests / o.window_s if o.window_s else 0.0
    return [o.name, f"{len(times)}/{len(o.reloads)}", timing, idle_timing, f"{o.window_s:.0f}",
            f"{wrk.get('requests', -1):,} ({wrk.get('rps', 0):,}/s)", wrk_errors,
            f"{o.redis_requests:,} ({redis_rps:,.0f}/s)", str(redis_errors),
            f"{probe_errors}/{o.probe_attempts}",
            f"{o.peak_rss_kib / 1024:.0f} / {o.peak_pss_kib / 1024:.0f} ({o.peak_processes})"]


def summary_table(outcomes: list[Outcome]) -> str:
    header = ["proxy", "reloads OK", "reload s median / max", "idle reload s", "window s", "wrk requests",
              "wrk errors connect/read/write/timeout/non-2xx", "redis requests", "redis errors",
              "new-conn probe failed/tried", "peak RSS / PSS MiB (processes)"]
    return markdown_table(header, [summary_row(o) for o in outcomes])


def report(outcomes: list[Outcome], args: argparse.Namespace, machine: list[str],
           loads: tuple[str, str]) -> str:
    """The section for bench/RESULTS.md (also printed)."""
    failures = [line for o in outcomes for line in timeline(o)]
    reload_failures = [f"{o.name}: reload {n}: {r.detail}" for o in outcomes
                       for n, r in enumerate(o.reloads, 1) if r.detail]
    return "\n".join([
        f"## hot restart (issue 4): {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        f"`{' '.join(['python bench/reload_bench.py', *args.argv])}`",
        "",
        *(f"- {line}" for line in machine),
        f"- load average (1, 5, 15 min) before / after: {loads[0]} / {loads[1]}; at each target's start: "
        + ", ".join(f"{o.name} {o.load_average}" for o in outcomes),
        f"- {args.reloads} reloads per target, one every {args.interval:g}s at most; window = "
        f"{args.warmup:g}s warm-up + reloads + {args.drain_time_s + 2:g}s; "
        f"meshproxy `--drain-time-s {args.drain_time_s:g} "
        f"--parent-shutdown-time-s {args.parent_shutdown_time_s:g}`; haproxy-hard-stop "
        f"`hard-stop-after {args.drain_time_s:g}s`",
        f"- load: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}` (keep-alive, unlimited requests per connection), "
        f"`redis-benchmark -c {REDIS_CLIENTS} -t set,get` (restarted after an error), and a new HTTP "
        f"connection every {PROBE_EVERY_S * 1000:.0f} ms",
        "",
        summary_table(outcomes),
        "",
        "Failures, each against the last reload signal before it and the drain deadlines:" if failures
        else "No failure.",
        "",
        *(f"- {line}" for line in failures + reload_failures),
    ]).rstrip() + "\n"


# ----- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: 2 reloads per target, shorter drains (< 1 minute)")
    add("--reloads", type=int, default=None,
        help="reloads per target under load (default 10; 2 with --quick)")
    add("--idle-reloads", type=int, default=None,
        help="reloads before the load starts, timed apart (default 2; 1 with --quick)")
    add("--interval", type=float, default=1.25,
        help="seconds between reload signals; never before the previous reload is READY (default 1.25)")
    add("--warmup", type=float, default=None,
        help="load before the first reload (default 2s; 1s with --quick)")
    add("--drain-time-s", type=float, default=None,
        help="meshproxy's --drain-time-s and haproxy-hard-stop's hard-stop-after (default 5; 1 with --quick)")
    add("--parent-shutdown-time-s", type=float, default=None,
        help="meshproxy's --parent-shutdown-time-s (default 10; 2 with --quick)")
    add("--meshproxy-log-level", default="warning",
        help="meshproxy's -l; its log is kept in bench/out/reload_bench/meshproxy.log (default warning)")
    add("--only", default=",".join(TARGETS), help=f"comma-separated among {','.join(TARGETS)} (default all)")
    add("--record", action="store_true", help=f"append the figures to {RESULTS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.reloads = args.reloads or (2 if args.quick else 10)
    args.idle_reloads = args.idle_reloads if args.idle_reloads is not None else (1 if args.quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.drain_time_s = args.drain_time_s if args.drain_time_s is not None else (1.0 if args.quick else 5.0)
    args.parent_shutdown_time_s = args.parent_shutdown_time_s or (2.0 if args.quick else 10.0)
    args.only = [t.strip() for t in args.only.split(",") if t.strip()]
    if unknown := set(args.only) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks that stop our processes run."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    machine = machine_lines()
    print("\n".join(machine), flush=True)
    load_before = load_average()
    OUT.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    with terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="reload_bench-") as tmp:
        servers: list[Spawned] = []
        try:
            backends = start_backends(Path(tmp), servers)
            for name in args.only:
                print(f"{name}: {args.reloads} reloads under load", flush=True)
                began = time.monotonic()
                outcomes.append(run_target(name, backends, args, Path(tmp)))
                print(f"{name}: done in {time.monotonic() - began:.0f}s", flush=True)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping what was started", file=sys.stderr)
            return 130
        finally:
            for server in servers:
                server.stop()
    section = report(outcomes, args, machine, (load_before, load_average()))
    print("\n" + section)
    (OUT / "last-run.md").write_text(section)
    if args.record:
        with open(RESULTS, "a") as f:
            f.write("\n" + section)
        print(f"appended to {RESULTS.relative_to(REPO)}")
    return 0 if all(not o.error for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
