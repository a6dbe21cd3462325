"""Raw HTTP/2 on a Unix socket: for requests no well-behaved client sends (half-sent messages,
announced lengths that never arrive, garbage frames) and for reading the status they get."""

from __future__ import annotations

import socket
from pathlib import Path

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, DATA, SETTINGS = 1, 0, 4
END_STREAM, END_HEADERS = 1, 4


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame; type, flags and stream id are cut to their field widths (fuzzers pass any)."""
    return (len(payload).to_bytes(3, "big") + bytes([kind & 0xFF, flags & 0xFF])
            + (stream_id & 0x7FFFFFFF).to_bytes(4, "big") + payload)


def request_headers(method: str, *, header: bool = True) -> bytes:
    fields = [(":method", "POST"), (":scheme", "http"), (":path", method),
              (":authority", "localhost"), ("content-type", "application/grpc"),
              ("te", "trailers")]
    if header:
        fields.append(("workload.spiffe.io", "true"))
    return bytes(hpack.Encoder().encode(fields))


def half_request(path: Path, method: str = "/SpiffeWorkloadAPI/FetchJWTSVID",
                 declared: int = 256, *, header: bool = True) -> socket.socket:
    """A request whose headers arrive and whose body never completes: its message prefix
    promises `declared` bytes, of which 1 is sent."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    s.sendall(PREFACE + frame(SETTINGS, 0, 0, b"")
              + frame(HEADERS, END_HEADERS, 1, request_headers(method, header=header))
              + frame(DATA, 0, 1, b"\x00" + declared.to_bytes(4, "big") + b"\x0a"))
    return s


def grpc_status(s: socket.socket, timeout: float) -> str | None:
    """The grpc-status the peer ended stream 1 with, or None if it has not within `timeout`."""
    s.settimeout(timeout)
    buf, decoder = b"", hpack.Decoder()
    try:
        while True:
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                size, kind = int.from_bytes(buf[:3], "big"), buf[3]
                payload, buf = buf[9:9 + size], buf[9 + size:]
                if kind == HEADERS:  # response headers, then the trailers
                    fields: dict[str | bytes, str | bytes] = dict(decoder.decode(payload))
                    status = fields.get("grpc-status") or fields.get(b"grpc-status")
                    if status is not None:
                        return status.decode() if isinstance(status, bytes) else str(status)
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except TimeoutError:
        return None


def blast(path: Path, data: bytes) -> None:
    """Send `data` on a new connection and read until the peer closes; a peer that neither
    answers nor closes within 2 s fails the caller with a timeout (a hang)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
