"""The main process: owns config, listening sockets, DNS and the workers.

It parses nothing on the data path and accepts no connections itself. At start it
resolves STRICT_DNS clusters (readiness waits for the first answer), binds one
SO_REUSEPORT socket per listener per worker, and forks the workers. Afterwards it
supervises them:

* a worker that dies is replaced on the same sockets, with exponential backoff when
  it keeps dying young (logged each time);
* DNS is refreshed every ``dns_refresh_rate`` and changed host sets are pushed to
  every worker over its control channel;
* SIGTERM/SIGINT: workers stop accepting and drain for up to ``--drain-time-s``; the
  main process exits 0 when they are gone (stragglers are killed a little later);
* SIGHUP hot-restarts (reload.py, hot_restart.py): a new generation takes over every
  socket, and this one steps down and drains;
* SIGUSR1 reopens the log file.

Signal handlers only schedule work on the loop; nothing heavy runs inside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import time
from dataclasses import dataclass

import msgpack

from filters.local_ratelimit.shared_bucket import HostSharedRegion
from meshproxy import __version__
from meshproxy.admin import AdminServer
from meshproxy.admin.tags import TagProducer
from meshproxy.config.model import Bootstrap, TrafficDirection
from meshproxy.dns import ClusterResolver, HostTuple
from meshproxy.hot_restart import Inherited, ParentLink, SocketOffer
from meshproxy.listen_sockets import adopt_listener, bind_admin_socket, bind_listener, bound_to
from meshproxy.logs import reopen_logs
from meshproxy.main_admin import MainAdmin
from meshproxy.main_stats import STATE_DRAINING, STATE_INITIALIZING, STATE_LIVE, MainStats
from meshproxy.reload import Reloader
from meshproxy.stats import StatsBackend
from meshproxy.statsd import StatsdSink
from workers.cluster import static_endpoints

log = logging.getLogger("meshproxy.main")

# A worker that dies within this many seconds of starting counts as a crash loop.
YOUNG_WORKER_S = 10.0
MAX_RESPAWN_DELAY_S = 30.0


@dataclass(frozen=True, slots=True)
class ServerOptions:
    concurrency: int
    base_id: int = 0
    drain_time_s: float = 600.0
    parent_shutdown_time_s: float = 900.0
    pid_file: str | None = None
    # The command line as given (shown by /server_info).
    cli: tuple[tuple[str, object], ...] = ()

    def command_line_options(self) -> dict[str, object]:
        return dict(self.cli) | {"concurrency": self.concurrency, "base_id": str(self.base_id),
                                 "drain_time": f"{self.drain_time_s:g}s",
                                 "parent_shutdown_time": f"{self.parent_shutdown_time_s:g}s"}


@dataclass(slots=True)
class WorkerSlot:
    """One worker position; its process is replaced when it dies."""

    index: int
    pid: int = 0
    area: int = -1
    control: socket.socket | None = None
    started_at: float = 0.0
    ready: bool = False
    quick_failures: int = 0
    respawn: asyncio.TimerHandle | None = None


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE to %s: %s", hard, exc)
    return soft


class MainProcess:
    """Runs one generation of meshproxy: its sockets, its workers, until told to stop."""

    def __init__(self, bootstrap: Bootstrap, options: ServerOptions, backend: StatsBackend,
                 inherited: Inherited | None = None, parent: ParentLink | None = None) -> None:
        self.bootstrap = bootstrap
        self.options = options
        self.backend = backend
        self.inherited = inherited
        self.epoch = inherited.epoch if inherited else 0
        self.stats = MainStats(backend.store, bootstrap, options.concurrency, epoch=self.epoch)
        self.reloader = Reloader(self, parent)
        self.stepped_down = False
        self.slots = [WorkerSlot(i) for i in range(options.concurrency)]
        self.sockets: dict[str, list[socket.socket]] = {}
        self.stopping = False
        self.loop = asyncio.new_event_loop()
        self.dns = ClusterResolver(self.loop, bootstrap.clusters, self.stats, self._push_hosts)
        self.done: asyncio.Future[int] = self.loop.create_future()
        self.started_at = time.time()
        self.first_started_at = inherited.first_started_at if inherited else self.started_at
        self.server_state = STATE_INITIALIZING
        self.health_failed = False
        self.stopped_listeners: set[str] = set()
        self.admin: AdminServer | None = None
        self.admin_socket: socket.socket | None = None
        self.sinks = [StatsdSink((s.address.address, s.address.port_value), s.prefix)
                      for s in bootstrap.stats_sinks]
        # Host-wide limiter state shared by all workers (docs/ratelimit.md); mapped before any fork.
        if inherited is not None and inherited.limits_fd is not None:  # buckets continue across reloads
            self.host_shared = HostSharedRegion.adopt(inherited.limits_fd)
        else:
            self.host_shared = HostSharedRegion.create(f"meshproxy_limits_{options.base_id}")

    # ----- start ----------------------------------------------------------------------------

    def run(self) -> int:
        asyncio.set_event_loop(self.loop)
        nofile = raise_nofile_limit()
        log.info("meshproxy %s starting: %d workers, RLIMIT_NOFILE %d", __version__,
                 self.options.concurrency, nofile)
        try:
            self.loop.run_until_complete(self.dns.resolve_all())
            for cluster in self.bootstrap.clusters:
                hosts = self.dns.resolved.get(cluster.name) or static_endpoints(cluster)
                self.stats.set_hosts(cluster.name, hosts)
            for listener in self.bootstrap.listeners:
                handed = self.inherited.take_listener(str(listener.address)) if self.inherited else None
                if handed:
                    self.sockets[listener.name] = adopt_listener(listener, handed, self.options.concurrency)
                else:
                    self.sockets[listener.name] = bind_listener(listener, self.options.concurrency)
                log.info("listener '%s' on %s%s", listener.name, self.sockets[listener.name][0].getsockname(),
                         " (handed over)" if handed else "")
            if self.inherited is not None:
                self.inherited.close_unused()
            if self.bootstrap.admin is not None:
                self.loop.run_until_complete(self._start_admin())
            elif self.inherited is not None and self.inherited.admin is not None:
                self.inherited.admin.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self.shutdown)
            self.loop.add_signal_handler(signal.SIGHUP, self.reloader.request)
            self.loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
            self.reloader.start()
            self.loop.add_signal_handler(signal.SIGCHLD, self._reap)
            for slot in self.slots:
                self._spawn(slot)
            self.dns.start_refreshing()
            self._tick()
            if self.inherited is not None:  # statsd deltas continue from the previous generation's totals
                snapshot = self.backend.snapshot()
                for sink in self.sinks:
                    sink.prime(snapshot)
            self.loop.call_later(self.bootstrap.stats_flush_interval, self._flush_stats)
            return self.loop.run_until_complete(self.done)
        finally:
            self._cleanup()

    def _push_hosts(self, cluster: str, hosts: list[HostTuple]) -> None:
        """A STRICT_DNS cluster's hosts changed: tell the stats and every worker."""
        self.stats.set_hosts(cluster, hosts)
        self._broadcast({"t": "hosts", "c": cluster, "h": [list(h) for h in hosts]})

    # ----- workers ----------------------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot) -> None:
        slot.respawn = None
        if self.stopping:
            return
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sockets = {name: socks[slot.index] for name, socks in self.sockets.items()}
        slot.area = self.backend.claim_area()
        stats_factory = self.backend.store_factory(slot.area)
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            # Never return into the main process's stack: its cleanup would kill the sibling workers.
            try:
                parent_end.close()
                self._close_in_worker(sockets)
                from workers.worker import run

                run(slot.index, self.bootstrap, sockets, child_end, stats_factory, self.dns.resolved,
                    self.options.drain_time_s, parent_pid, frozenset(self.stopped_listeners),
                    host_shared=self.host_shared)
            except BaseException:
                log.exception("worker %d failed to start", slot.index)
            finally:
                os._exit(1)
        child_end.close()
        parent_end.setblocking(False)
        slot.pid = pid
        slot.control = parent_end
        slot.started_at = time.monotonic()
        slot.ready = False
        self.loop.add_reader(parent_end.fileno(), self._on_worker_message, slot)
        log.info("worker %d started (pid %d)", slot.index, pid)

    def _on_worker_message(self, slot: WorkerSlot) -> None:
        control = slot.control
        if control is None:
            return
        try:
            data = control.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_control(slot)
            return
        message = msgpack.unpackb(data)
        if message.get("t") == "ready":
            slot.ready = True
            self.stats.listener_manager.workers_started.set(sum(1 for s in self.slots if s.ready))
            if self.server_state == STATE_INITIALIZING and all(s.ready for s in self.slots):
                self._set_state(STATE_LIVE)
                log.info("all %d workers ready", len(self.slots))
                self._write_pid_file()  # the pid file names the generation that serves
                self.reloader.announce_ready()

    def _drop_control(self, slot: WorkerSlot) -> None:
        if slot.control is not None:
            self.loop.remove_reader(slot.control.fileno())
            slot.control.close()
            slot.control = None

    def _broadcast(self, message: dict) -> None:
        data = msgpack.packb(message)
        for slot in self.slots:
            if slot.control is not None:
                try:
                    slot.control.send(data)
                except OSError as exc:
                    log.warning("worker %d: control channel: %s", slot.index, exc)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                self.reloader.child_exited(pid, _describe_status(status))
                continue
            self._on_worker_exit(slot, status)
        if self.stopping and all(s.pid == 0 for s in self.slots) and not self.done.done():
            self.done.set_result(0)

    def _on_worker_exit(self, slot: WorkerSlot, status: int) -> None:
        pid, slot.pid = slot.pid, 0
        self._drop_control(slot)
        slot.ready = False
        if slot.area >= 0:  # fold its counters into the retained totals, drop its gauges
            self.backend.release_area(slot.area)
            slot.area = -1
        if self.stopping:
            log.info("worker %d exited (%s)", slot.index, _describe_status(status))
            return
        self.stats.server.worker_restarts.inc()
        lived = time.monotonic() - slot.started_at
        slot.quick_failures = slot.quick_failures + 1 if lived < YOUNG_WORKER_S else 0
        delay = 0.0 if slot.quick_failures <= 1 else min(MAX_RESPAWN_DELAY_S, 0.1 * 2 ** slot.quick_failures)
        log.warning("worker %d (pid %d) exited unexpectedly (%s) after %.1fs; restarting in %.1fs",
                    slot.index, pid, _describe_status(status), lived, delay)
        slot.respawn = self.loop.call_later(delay, self._spawn, slot)

    # ----- stop -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful stop: workers drain, then the main process exits 0."""
        if self.stopping:
            return
        self.stopping = True
        self.dns.stop()
        self._set_state(STATE_DRAINING)
        log.info("shutting down: draining workers for up to %.0fs", self.options.drain_time_s)
        self.reloader.on_shutdown()
        if self.admin is not None:
            self.loop.create_task(self.admin.stop())
        for slot in self.slots:
            if slot.respawn is not None:
                slot.respawn.cancel()
                slot.respawn = None
            if slot.pid:
                _signal(slot.pid, signal.SIGTERM)
        self.loop.call_later(self.options.drain_time_s + 5.0, self._kill_stragglers)
        self._reap()

    def _kill_stragglers(self) -> None:
        for slot in self.slots:
            if slot.pid:
                log.warning("worker %d did not exit after the drain; killing it", slot.index)
                _signal(slot.pid, signal.SIGKILL)

    def _tick(self) -> None:
        self.stats.tick()
        if not self.stopping:
            self.loop.call_later(1.0, self._tick)

    def process_pids(self) -> list[int]:
        return [os.getpid()] + [s.pid for s in self.slots if s.pid]

    # ----- admin ----------------------------------------------------------------------------

    async def _start_admin(self) -> None:
        admin = self.bootstrap.admin
        assert admin is not None
        handed = self.inherited.admin if self.inherited else None
        if handed is not None and bound_to(handed, admin.address.address, admin.address.port_value):
            sock = handed
        else:
            if handed is not None:
                handed.close()  # the admin address changed: the old one dies with the old generation
            sock = bind_admin_socket(admin.address.address, admin.address.port_value)
        sock.setblocking(False)
        self.admin_socket = sock
        use_default_tags = self.bootstrap.stats_config.use_all_default_tags
        self.admin = AdminServer(MainAdmin(self), producer=None if use_default_tags else TagProducer(()))
        address = await self.admin.start(sock=sock)
        log.info("admin listening on %s:%d", address[0], address[1])

    def _flush_stats(self) -> None:
        """Every stats_flush_interval: refresh main-process figures, feed the sinks, end an interval."""
        try:
            snapshot = self.backend.snapshot()
            self.stats.refresh(snapshot, self.process_pids())
            for sink in self.sinks:
                sink.flush(snapshot)
            if self.admin is not None:
                self.admin.record_flush(snapshot)
        except Exception:  # a sink or a slow snapshot must never stop the main process
            log.exception("stats flush failed")
        if not self.stopping:
            self.loop.call_later(self.bootstrap.stats_flush_interval, self._flush_stats)

    def _set_state(self, state: int) -> None:
        self.server_state = state
        self.stats.server.state.set(state)
        self.stats.server.live.set(1 if state == STATE_LIVE else 0)

    def set_health_failed(self, failed: bool) -> None:
        """/healthcheck/fail and /healthcheck/ok: /ready answers 503 DRAINING while failed."""
        self.health_failed = failed
        if not self.stopping and self.server_state != STATE_INITIALIZING:
            self._set_state(STATE_DRAINING if failed else STATE_LIVE)

    def drain_listeners(self, graceful: bool, inbound_only: bool) -> None:
        """/drain_listeners: stop accepting (after the drain time when graceful); the process stays up."""
        names = [lst.name for lst in self.bootstrap.listeners
                 if not inbound_only or lst.traffic_direction is TrafficDirection.INBOUND]
        self.stopped_listeners.update(names)
        self.stats.listener_manager.listener_stopped.inc(len(names))
        self._broadcast({"t": "stop_listeners", "names": names,
                         "after": self.options.drain_time_s if graceful else 0.0})

    # ----- hot restart ------------------------------------------------------------------------

    def socket_offer(self) -> SocketOffer:
        """Every listening socket, for the next generation (hot_restart.py)."""
        listeners = tuple((lst.name, str(lst.address), tuple(self.sockets[lst.name]))
                          for lst in self.bootstrap.listeners if lst.name in self.sockets)
        return SocketOffer(listeners, self.admin_socket, self.epoch, self.first_started_at,
                           self.host_shared.fileno())

    def step_down(self) -> None:
        """A newer generation serves: stop accepting now, drain, be gone by the shutdown time."""
        self.stepped_down = True
        self.stopping = True
        self.dns.stop()
        self._set_state(STATE_DRAINING)
        self.stats.retire()
        if self.admin is not None:
            self.loop.create_task(self.admin.stop())
        for slot in self.slots:
            if slot.respawn is not None:
                slot.respawn.cancel()
                slot.respawn = None
        self._broadcast({"t": "drain"})
        # Our copies of the listening sockets: the new generation holds its own.
        for socks in self.sockets.values():
            for sock in set(socks):
                sock.close()
        self.sockets.clear()
        self.loop.call_later(self.options.parent_shutdown_time_s, self.hard_stop)
        self._reap()

    def hard_stop(self) -> None:
        """Past the parent shutdown time (or too many generations draining): go now."""
        log.info("stopping this generation now")
        self.stopping = True
        self.dns.stop()
        for slot in self.slots:
            if slot.pid:
                _signal(slot.pid, signal.SIGKILL)
        if all(s.pid == 0 for s in self.slots) and not self.done.done():
            self.done.set_result(0)

    def _close_in_worker(self, keep: dict[str, socket.socket]) -> None:
        """In a freshly forked worker: close what belongs to the main process or other workers."""
        keep_fds = {s.fileno() for s in keep.values()}
        for other in self.slots:
            if other.control is not None:
                other.control.close()
        for socks in self.sockets.values():
            for sock in set(socks):
                if sock.fileno() not in keep_fds:
                    sock.close()
        if self.admin_socket is not None:
            self.admin_socket.close()
        for fd in self.reloader.link_fds():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _write_pid_file(self) -> None:
        if self.options.pid_file:
            with open(self.options.pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")

    def _cleanup(self) -> None:
        for slot in self.slots:
            if slot.pid:
                _signal(slot.pid, signal.SIGKILL)
        for socks in self.sockets.values():
            for sock in set(socks):
                sock.close()
        if self.options.pid_file and _read_pid(self.options.pid_file) == os.getpid():
            os.unlink(self.options.pid_file)  # a newer generation's pid file stays
        for sink in self.sinks:
            sink.close()
        if self.admin_socket is not None:
            self.admin_socket.close()
        self.backend.close(unlink=not self.stepped_down)


def _read_pid(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
