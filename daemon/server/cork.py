"""One send per connection per pass of the event loop, not one per HTTP/2 frame.

grpclib writes each frame group as soon as h2 makes it: a unary answer is a HEADERS write, a
DATA write and a trailers write, and reading a request may add a WINDOW_UPDATE, each its own
send() on the socket and its own wake-up of the peer. A `CorkedTransport` stands between the
protocol and the socket's transport and gathers what one connection writes until the loop has
run what was ready when the first write came, then sends it in one write. A unary handler
writes its whole answer, and the flow-control update for the request it read, within its own
pass: one send per call (strace: 1.02 sendto per FetchJWTSVID, as with gathering over two
passes, which cost one more loop pass per reply). Order is kept; nothing is held past that
pass, and closing sends what was gathered first.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CorkedTransport(asyncio.Transport):
    """Wraps a connection's transport; everything but writing goes straight to it."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._chunks:
            self._loop.call_soon(self._send)
        self._chunks.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _send(self) -> None:
        if not self._chunks:
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._send()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(c) for c in self._chunks)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    # -- the rest, passed through ----------------------------------------------------------

    def close(self) -> None:
        self._send()
        self._transport.close()

    def abort(self) -> None:
        self._chunks.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()
