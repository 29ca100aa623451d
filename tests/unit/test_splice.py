"""workers/splice.py on real TCP sockets on 127.0.0.1 and real uvloop transports."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from dataclasses import dataclass

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


@dataclass
class Rig:
    """client -> [src transport | splice | dst transport] -> server, all on 127.0.0.1."""

    client: socket.socket
    src: Side
    dst: Side
    server: socket.socket
    direction: SplicedDirection

    def close(self) -> None:
        self.direction.stop()
        for sock in (self.client, self.server):
            sock.close()
        for side in (self.src, self.dst):
            assert side.transport is not None
            side.transport.close()


async def spliced_pair(loop: asyncio.AbstractEventLoop) -> Rig:
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
    return Rig(client, src, dst, server, direction)


async def recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        got += await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
    return bytes(got)


def test_bytes_move_without_python_and_eof_returns_to_the_transport(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        rig = await spliced_pair(loop)
        assert rig.direction.active

        async def send() -> None:
            await loop.sock_sendall(rig.client, PAYLOAD)
            rig.client.shutdown(socket.SHUT_WR)

        sender = loop.create_task(send())
        assert await recv_exactly(loop, rig.server, len(PAYLOAD)) == PAYLOAD
        await sender
        assert rig.src.python_reads == 0
        # The client's FIN: the splice hands the socket back and uvloop delivers the EOF.
        await asyncio.wait_for(rig.src.eof, 5)
        assert not rig.direction.active
        rig.close()

    loop.run_until_complete(scenario())


def test_a_full_destination_pauses_the_splice_and_loses_nothing(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        rig = await spliced_pair(loop)
        payload = PAYLOAD * 8  # 64 MiB: more than every buffer on the way can hold
        sender = loop.create_task(loop.sock_sendall(rig.client, payload))
        await asyncio.sleep(0.5)  # the server reads nothing meanwhile: the pipe cannot drain
        assert not sender.done()
        assert await recv_exactly(loop, rig.server, len(payload)) == payload
        await sender
        rig.close()

    loop.run_until_complete(scenario())


def test_stop_releases_every_descriptor(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        rig = await spliced_pair(loop)
        spliced = len(os.listdir("/proc/self/fd"))
        rig.direction.stop()
        rig.direction.stop()  # idempotent
        assert not rig.direction.active
        assert len(os.listdir("/proc/self/fd")) == spliced - 4  # 2 duplicates, 2 pipe ends
        rig.close()

    loop.run_until_complete(scenario())
