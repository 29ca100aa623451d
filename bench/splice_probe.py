#!/usr/bin/env python3
"""Would zero-copy ``os.splice`` beat meshproxy's relay mode for bulk TCP on loopback?

Relay mode (workers/relay.py) hands each uvloop read (up to 256 KiB) to the peer transport's
``write`` with no Python frame per chunk, but the bytes still cross user space; ``splice``
(socket -> pipe -> socket) would not, so this probe measures it before anyone builds it.
Each relay runs alone in a forked child (CPU = its user + sys from ``os.wait4``), on uvloop:

* ``uvloop-relay``: meshproxy's own ``Relay`` joins the transports as tcp_proxy does, with its
  splice-auto switch off; 1 MiB / 512 KiB write watermarks (meshproxy's default) pause the
  other side; EOF -> ``write_eof``. ``relay-splice-auto``: the same with the switch on (what
  tcp_proxy does now: a direction moves to ``workers/splice.py`` after its first busy second).
* ``splice``: socket -> pipe (``F_SETPIPE_SZ`` 1 MiB if allowed) -> socket, ``SPLICE_F_MOVE |
  SPLICE_F_NONBLOCK``, non-blocking TCP_NODELAY sockets, on uvloop ``add_reader``/``add_writer``:
  one splice in per readable event, then drain the pipe; no reading while upstream is full.
* ``asyncio-copy``: the same transports, not joined: Python ``data_received`` calls the
  peer's ``write(data)`` (a Python frame per chunk). ``direct``: no relay, for reference.

The sender ``sendall``s N bytes (``--gib``) from a 1 MiB buffer; the sink ``recv_into``s 1 MiB
at a time to EOF and checks the count. GB/s = N / (sender's connect to sink's EOF), GB = 1e9 B.
Modes interleave over ``--rounds``, order rotating; each transfer first waits (bounded) until
others' load is under 25% of the CPUs. Medians; ratios of medians. Holds ``flock`` on
/tmp/meshproxy-bench.lock; children are bounded by alarm() and SIGKILLed by PID if left.
"""

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workers import relay as relay_module
from workers.relay import Relay

LOCK_PATH = "/tmp/meshproxy-bench.lock"
BUFFER_LIMIT = 1024 * 1024  # meshproxy's default per_connection_buffer_limit_bytes
PIPE_SIZE = IO_BUF = 1024 * 1024
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
MODES = ("direct", "uvloop-relay", "relay-splice-auto", "splice", "asyncio-copy")
_live: set[int] = set()


def sender(addr: tuple[str, int], total: int, out: int) -> None:
    """Connect, send ``total`` bytes, half-close, wait for the peer's EOF."""
    buf = memoryview(bytearray(os.urandom(64)) * (IO_BUF // 64))
    start = time.monotonic()
    s = socket.create_connection(addr)
    for offset in range(0, total, IO_BUF):
        s.sendall(buf[:total - offset])  # a view: no copy
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096):
        pass
    os.write(out, f"sender {start!r}\n".encode())


def sink(listener: socket.socket, total: int, out: int) -> None:
    """Accept one connection, read it to EOF, report when and how much; fail on a short count."""
    conn, _ = listener.accept()
    buf = bytearray(IO_BUF)
    got = 0
    while n := conn.recv_into(buf):
        got += n
    os.write(out, f"sink {time.monotonic()!r} {got}\n".encode())
    if got != total:
        raise SystemExit(f"sink got {got} bytes, expected {total}")


class Side(asyncio.Protocol):
    """One socket of a uvloop relay: what relay mode leaves to Python (EOF, close, flow control)."""

    def __init__(self, done: asyncio.Future[None], peer_write: Callable[[bytes], object] | None = None):
        self.done, self.peer_write = done, peer_write
        self.transport: Any = None
        self.peer: Any = None
        self.relay: Relay | None = None
        self.eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=BUFFER_LIMIT, low=BUFFER_LIMIT // 2)

    def data_received(self, data: bytes) -> None:  # asyncio-copy only: relay mode rebinds it
        self.peer_write(data)  # type: ignore[misc]

    def eof_received(self) -> bool:
        self.eof = True
        if not self.peer.eof:
            self.peer.transport.write_eof()
            return True
        if self.relay is not None:
            self.relay.stop()  # as tcp_proxy does before either socket closes
        self.transport.close()
        self.peer.transport.close()
        return True

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(None)


class SplicePump:
    """One direction, src socket -> pipe -> dst socket, driven by the loop's fd callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket) -> None:
        self.loop, self.src, self.dst = loop, src.fileno(), dst.fileno()
        self.dst_sock, self.done = dst, loop.create_future()
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.cap = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)
        self.pending = self.calls = 0
        self.eof = self.blocked = False
        loop.add_reader(self.src, self.readable)

    def readable(self) -> None:
        try:
            n = os.splice(self.src, self.w, self.cap, flags=SPLICE_FLAGS)
        except BlockingIOError:
            return
        self.calls += 1
        self.pending += n
        if n == 0:
            self.eof = True
            self.loop.remove_reader(self.src)
        self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                self.pending -= os.splice(self.r, self.dst, self.pending, flags=SPLICE_FLAGS)
            except BlockingIOError:
                if not self.blocked:
                    self.blocked = True
                    self.loop.remove_reader(self.src)
                    self.loop.add_writer(self.dst, self.flush)
                return
        if self.blocked:
            self.blocked = False
            self.loop.remove_writer(self.dst)
            if not self.eof:
                self.loop.add_reader(self.src, self.readable)
        if self.eof:
            self.dst_sock.shutdown(socket.SHUT_WR)
            os.close(self.r)
            os.close(self.w)
            self.done.set_result(None)


async def relay(mode: str, listener: socket.socket, upstream: tuple[str, int], out: int) -> None:
    """Accept one client, connect upstream, relay both ways (as ``mode`` says) until both EOFs."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    client, _ = await loop.sock_accept(listener)
    up = socket.socket()
    up.setblocking(False)
    await loop.sock_connect(up, upstream)
    if mode == "splice":
        for s in (client, up):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [SplicePump(loop, client, up), SplicePump(loop, up, client)]
        await asyncio.gather(*(p.done for p in pumps))  # the sockets close when the child exits
        os.write(out, f"splice {pumps[0].calls} {pumps[0].cap}\n".encode())
        return
    up_done, down_done = loop.create_future(), loop.create_future()
    up_t, up_p = await loop.create_connection(lambda: Side(up_done), sock=up)
    down_t, down_p = await loop.connect_accepted_socket(lambda: Side(down_done, up_t.write), client)
    up_p.peer, down_p.peer, up_p.peer_write = down_p, up_p, down_t.write
    if mode == "uvloop-relay":
        relay_module.SPLICE_AUTO_BYTES = 1 << 62  # never
    if mode in ("uvloop-relay", "relay-splice-auto"):  # what tcp_proxy does once connected
        up_p.relay = down_p.relay = Relay(down_t, up_t, 0, 0, lambda down, up: None)
    await asyncio.gather(up_done, down_done)


def fork(timeout: float, fn: Callable[..., object], *args: Any) -> int:
    """Run ``fn(*args)`` in a child that alarm() ends after ``timeout`` s; exit status 0 on success."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(int(timeout) + 1)
        try:
            fn(*args)
        except BaseException as e:
            print(f"child: {e!r}", file=sys.stderr)
            os._exit(1)
        os._exit(0)  # never runs the parent's cleanup
    _live.add(pid)
    return pid


def kill_all() -> None:
    for pid in list(_live):
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        _live.discard(pid)


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval`` s (/proc/stat): between transfers, others' load."""
    def ticks() -> tuple[int, int]:
        t = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(t), t[3] + t[4]
    all0, idle0 = ticks()
    time.sleep(interval)
    all1, idle1 = ticks()
    return 1.0 - (idle1 - idle0) / max(1, all1 - all0)


def run_once(mode: str, total: int, timeout: float) -> dict[str, float]:
    """One transfer through ``mode``: GB/s and, for relays, the relay child's CPU-s/GB."""
    r, w = os.pipe()
    sink_l, relay_l = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    sink_addr, relay_addr = sink_l.getsockname(), relay_l.getsockname()
    sink_pid = fork(timeout, sink, sink_l, total, w)
    relay_pid = 0 if mode == "direct" else fork(
        timeout, lambda: uvloop.run(relay(mode, relay_l, sink_addr, w)))
    sender_pid = fork(timeout, sender, relay_addr if relay_pid else sink_addr, total, w)
    pids = [pid for pid in (sink_pid, relay_pid, sender_pid) if pid]
    for fd in (sink_l.detach(), relay_l.detach(), w):
        os.close(fd)
    usage: dict[int, Any] = {}
    for pid in pids:  # bounded: every child dies by its alarm at the latest
        _, status, usage[pid] = os.wait4(pid, 0)
        _live.discard(pid)
        if status:
            raise RuntimeError(f"{mode}: child {pid} failed (wait status {status})")
    report = {ln.split()[0]: ln.split()[1:] for ln in os.read(r, 65536).decode().splitlines()}
    os.close(r)
    secs, gb = float(report["sink"][0]) - float(report["sender"][0]), total / 1e9
    row = {"gbps": gb / secs}
    if relay_pid:
        user, sys_ = usage[relay_pid].ru_utime, usage[relay_pid].ru_stime
        row.update(cpu=(user + sys_) / gb, user=user / gb, sys=sys_ / gb, core=(user + sys_) / secs)
    if "splice" in report:
        row.update(per_splice=total / max(1, int(report["splice"][0])), pipe=int(report["splice"][1]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description="os.splice vs meshproxy relay mode, bulk TCP on loopback")
    ap.add_argument("--gib", type=float, default=2.0, help="GiB per transfer (default 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0, help="bound per transfer, seconds")
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="max s to wait for others' load")
    args = ap.parse_args()
    total = int(args.gib * (1 << 30))
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with open(LOCK_PATH, "a+") as lock:
        print(f"waiting for {LOCK_PATH} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for rnd in range(args.rounds):
                for mode in MODES[rnd % len(MODES):] + MODES[:rnd % len(MODES)]:
                    deadline = time.monotonic() + args.quiet_wait
                    while (busy := cpu_busy()) >= 0.25 and time.monotonic() < deadline:
                        pass
                    rows[mode].append(row := run_once(mode, total, args.timeout))
                    print(f"round {rnd + 1} {mode:17} others-busy={busy:.0%}",
                          *(f"{k}={v:.3g}" for k, v in row.items()), flush=True)
        finally:
            kill_all()
            fcntl.flock(lock, fcntl.LOCK_UN)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[mode])

    print(f"\n{total} bytes per transfer, {args.rounds} rounds, medians; CPU = relay child user+sys")
    print(f"{'relay':17}   GB/s  CPU-s/GB   user    sys  core% CPU/GB vs uv GB/s vs uv")
    for mode in MODES[1:]:
        cpu, gbps = med(mode, "cpu"), med(mode, "gbps")
        print(f"{mode:17} {gbps:6.2f} {cpu:9.3f} {med(mode, 'user'):6.3f} {med(mode, 'sys'):6.3f} "
              f"{100 * med(mode, 'core'):6.0f} {cpu / med('uvloop-relay', 'cpu'):12.2f} "
              f"{gbps / med('uvloop-relay', 'gbps'):10.2f}")
    print(f"{'direct':17} {med('direct', 'gbps'):6.2f}  (sender -> sink, no relay)\nsplice: pipe "
          f"{rows['splice'][0]['pipe']:.0f} B, median {med('splice', 'per_splice'):.0f} B per splice in")


if __name__ == "__main__":
    main()
