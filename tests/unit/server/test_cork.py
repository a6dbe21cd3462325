"""CorkedTransport: what one connection writes in a pass of the loop goes out as one send, in
order; closing sends what was gathered first; everything else reaches the socket's transport."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ensign.daemon.server.cork import CorkedTransport


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def _pair() -> tuple[CorkedTransport, list[bytes], _Protocol, socket.socket]:
    """A corked transport on one end of a real socket pair; the other end read by a protocol.
    `sent` lists what reached the socket's transport, write by write."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    inner, _ = await loop.create_connection(asyncio.Protocol, sock=a)
    sent: list[bytes] = []
    write = inner.write

    def recording(data: Any) -> None:
        sent.append(bytes(data))
        write(data)

    inner.write = recording  # type: ignore[method-assign]
    peer = _Protocol()
    await loop.create_connection(lambda: peer, sock=b)
    return CorkedTransport(inner, loop), sent, peer, a  # type: ignore[arg-type]


async def _passes(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_one_reply_is_one_send_in_order() -> None:
    async def main() -> tuple[list[bytes], bytes]:
        cork, sent, peer, _ = await _pair()
        for part in (b"HEADERS", b"DATA", b"", b"TRAILERS"):  # a unary reply, as h2 makes it
            cork.write(part)
        assert sent == []  # nothing goes out before the loop has run what was ready
        await _passes(4)
        cork.write(b"NEXT")
        await _passes(4)
        while len(peer.received) < len(b"HEADERSDATATRAILERSNEXT"):
            await asyncio.sleep(0.01)
        cork.close()
        return sent, bytes(peer.received)

    sent, received = asyncio.run(main())
    assert sent == [b"HEADERSDATATRAILERS", b"NEXT"]
    assert received == b"HEADERSDATATRAILERSNEXT"


def test_close_sends_what_was_gathered_and_abort_drops_it() -> None:
    async def main() -> tuple[bytes, bytes, bool]:
        cork, _, peer, sock = await _pair()
        assert cork.get_extra_info("socket").fileno() == sock.fileno()  # peer creds read it
        cork.write(b"last words")
        cork.close()
        await asyncio.wait_for(peer.closed.wait(), 10)
        closed_then = bytes(peer.received)
        cork2, sent2, peer2, _ = await _pair()
        cork2.write(b"never")
        cork2.abort()
        await asyncio.wait_for(peer2.closed.wait(), 10)
        return closed_then, bytes(peer2.received) + b"".join(sent2), cork2.is_closing()

    closed_then, aborted, closing = asyncio.run(main())
    assert closed_then == b"last words"
    assert aborted == b""
    assert closing is True
