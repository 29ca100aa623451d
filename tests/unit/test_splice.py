"""workers/splice.py on real TCP sockets on 127.0.0.1 and real uvloop transports."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest
import uvloop
from unit.test_relay import tcp_pair

from workers.splice import SplicedDirection

PAYLOAD = random.Random(5).randbytes(8 * 1024 * 1024)


class Side(asyncio.Protocol):
    """Records what reaches Python: reads and EOF."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.python_reads = 0
        self.eof = asyncio.get_event_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.python_reads += 1

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return True  # keep the transport open, as the connection layer does for half-close


@pytest.fixture
def loop() -> asyncio.AbstractEventLoop:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


async def spliced_pair(loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, Side, Side, socket.socket,
                                                                 SplicedDirection]:
    """client -> [src transport | splice | dst transport] -> server."""
    client, src_sock = tcp_pair()
    dst_sock, server = tcp_pair()
    for sock in (client, server):
        sock.setblocking(False)
    src, dst = Side(), Side()
    await loop.create_connection(lambda: src, sock=src_sock)
    await loop.create_connection(lambda: dst, sock=dst_sock)
    assert src.transport is not None
    src.transport.pause_reading()  # the hold a relay takes before it splices
    direction = SplicedDirection(loop, src.transport, dst.transport, "client->server",
                                 release=src.transport.resume_reading)
    return client, src, dst, server, direction


async def read_until_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    got = bytearray()
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5):
        got += chunk
    return bytes(got)


def test_bytes_move_without_python_and_eof_returns_to_the_transport(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        client, src, dst, server, direction = await spliced_pair(loop)
        assert direction.active

        async def send() -> None:
            await loop.sock_sendall(client, PAYLOAD)
            client.shutdown(socket.SHUT_WR)

        sender = loop.create_task(send())
        got = bytearray()
        while len(got) < len(PAYLOAD):
            got += await asyncio.wait_for(loop.sock_recv(server, 1 << 20), 5)
        await sender
        assert bytes(got) == PAYLOAD
        assert src.python_reads == 0
        # The client's FIN: the splice hands the socket back and uvloop delivers the EOF.
        await asyncio.wait_for(src.eof, 5)
        assert not direction.active
        for sock in (client, server):
            sock.close()
        for side in (src, dst):
            assert side.transport is not None
            side.transport.close()

    loop.run_until_complete(scenario())


def test_a_full_destination_pauses_the_splice_and_loses_nothing(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        client, src, dst, server, direction = await spliced_pair(loop)
        payload = PAYLOAD * 8  # 64 MiB: more than every buffer on the way can hold
        sender = loop.create_task(loop.sock_sendall(client, payload))
        await asyncio.sleep(0.5)  # the server reads nothing meanwhile: the pipe cannot drain
        assert not sender.done()
        got = bytearray()
        while len(got) < len(payload):
            got += await asyncio.wait_for(loop.sock_recv(server, 1 << 20), 5)
        await sender
        assert bytes(got) == payload
        direction.stop()
        assert not direction.active
        for sock in (client, server):
            sock.close()
        for side in (src, dst):
            assert side.transport is not None
            side.transport.close()

    loop.run_until_complete(scenario())


def test_stop_releases_every_descriptor(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        client, src, dst, server, direction = await spliced_pair(loop)
        spliced = len(os.listdir("/proc/self/fd"))
        direction.stop()
        direction.stop()  # idempotent
        assert len(os.listdir("/proc/self/fd")) == spliced - 4  # 2 duplicates, 2 pipe ends
        for sock in (client, server):
            sock.close()
        for side in (src, dst):
            assert side.transport is not None
            side.transport.close()

    loop.run_until_complete(scenario())
