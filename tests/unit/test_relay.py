"""workers/relay.py on real TCP sockets on 127.0.0.1 and real uvloop transports."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import uvloop

from workers.relay import Relay, bytes_received, quiet_seconds


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def recv_all(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        assert chunk, "EOF before all bytes arrived"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def test_bytes_received_counts_payload_not_the_fin() -> None:
    client, accepted = tcp_pair()
    with client, accepted:
        assert bytes_received(accepted) == 0
        client.sendall(b"x" * 12345)
        assert recv_all(accepted, 12345) == b"x" * 12345
        assert bytes_received(accepted) == 12345
        client.shutdown(socket.SHUT_WR)  # the FIN advances the kernel's count by one
        assert accepted.recv(1) == b""
        assert bytes_received(accepted) == 12345  # CLOSE_WAIT
        accepted.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
        time.sleep(0.05)  # our FIN acknowledged: accepted is in CLOSE
        assert bytes_received(accepted) == 12345


def test_fin_not_counted_before_the_eof_is_read() -> None:
    # The side that sends its FIN first goes to CLOSE as soon as the peer's FIN arrives,
    # before anyone reads the EOF: a relay sample can land in that moment.
    client, accepted = tcp_pair()
    with client, accepted:
        accepted.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
        client.sendall(b"y" * 100)
        client.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 7  # CLOSE
        assert bytes_received(accepted) == 100  # nothing read yet, FIN left out
        assert recv_all(accepted, 100) == b"y" * 100 and accepted.recv(1) == b""
        assert bytes_received(accepted) == 100


def test_quiet_seconds_grows_while_nothing_arrives() -> None:
    client, accepted = tcp_pair()
    with client, accepted:
        client.sendall(b"x")
        recv_all(accepted, 1)
        time.sleep(0.3)
        quiet = quiet_seconds(accepted)
        assert quiet is not None and 0.25 <= quiet < 5.0
        client.sendall(b"y")
        recv_all(accepted, 1)
        assert quiet_seconds(accepted) < 0.25  # type: ignore[operator]


def test_closed_socket_reads_as_unknown() -> None:
    client, accepted = tcp_pair()
    client.close()
    accepted.close()
    assert bytes_received(accepted) is None
    assert quiet_seconds(accepted) is None


class Recording(asyncio.Protocol):
    """A protocol that records what reaches its Python ``data_received``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.python_reads = 0
        self.received = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.python_reads += 1
        self.received += data


async def joined_pair(loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, Recording,
                                                                Recording, socket.socket]:
    """client <-> [down transport | relay | up transport] <-> server."""
    client, down_sock = tcp_pair()
    up_sock, server = tcp_pair()
    for sock in (client, server):
        sock.setblocking(False)
    down, up = Recording(), Recording()
    await loop.create_connection(lambda: down, sock=down_sock)
    await loop.create_connection(lambda: up, sock=up_sock)
    return client, down, up, server


async def send_and_receive(loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket,
                           payload: bytes) -> bytes:
    await loop.sock_sendall(src, payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(loop.sock_recv(dst, 1 << 20), 5)
        assert chunk
        got += chunk
    return bytes(got)


@pytest.fixture
def loop() -> asyncio.AbstractEventLoop:
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def test_relay_moves_bytes_both_ways_without_python_reads(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        client, down, up, server = await joined_pair(loop)
        reported: list[tuple[int, int]] = []
        # 7 bytes from downstream were already counted by the filter before relaying.
        await loop.sock_sendall(client, b"early!!")
        while len(down.received) < 7:
            await asyncio.sleep(0.01)
        assert down.transport is not None and up.transport is not None
        relay = Relay(down.transport, up.transport, 7, 0, lambda d, u: reported.append((d, u)))
        to_server = bytes(range(256)) * 4096  # 1 MiB
        to_client = b"reply" * 50_000
        assert await send_and_receive(loop, client, server, to_server) == to_server
        assert await send_and_receive(loop, server, client, to_client) == to_client
        relay.sample()
        relay.sample()  # nothing new: nothing reported
        assert down.python_reads == 1 and up.python_reads == 0  # only the early read went through Python
        relay.stop()
        assert reported == [(len(to_server), len(to_client))]
        for sock in (client, server):
            sock.close()
        down.transport.close()
        up.transport.close()

    loop.run_until_complete(scenario())


def test_relay_is_sampled_every_second_while_open(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        client, down, up, server = await joined_pair(loop)
        totals = [0, 0]

        def on_bytes(d: int, u: int) -> None:
            totals[0] += d
            totals[1] += u

        assert down.transport is not None and up.transport is not None
        relay = Relay(down.transport, up.transport, 0, 0, on_bytes)
        await send_and_receive(loop, client, server, b"a" * 1000)
        await send_and_receive(loop, server, client, b"b" * 300)
        deadline = loop.time() + 3.0
        while totals != [1000, 300] and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert totals == [1000, 300]  # reported by the sampler, no stop() yet
        relay.stop()
        for sock in (client, server):
            sock.close()
        down.transport.close()
        up.transport.close()

    loop.run_until_complete(scenario())
