"""Raw grpcio calls on the daemon's sockets: what a client that does not use py-spiffe sends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from ensign.proto import workload_pb2 as pb

HEADER = (("workload.spiffe.io", "true"),)
Metadata = tuple[tuple[str, str], ...]


def channel(socket: str | Path) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{socket}")


def unary(socket: str | Path, method: str, request: bytes, *, header: bool = True,
          timeout: float = 10) -> bytes:
    """A Workload API unary call (`method` without its service); errors raise grpc.RpcError."""
    with channel(socket) as ch:
        rpc = ch.unary_unary(f"/SpiffeWorkloadAPI/{method}")
        response: bytes = rpc(request, metadata=HEADER if header else (), timeout=timeout)
        return response


def stream(ch: grpc.Channel, method: str, *, header: bool = True,
           timeout: float | None = None) -> Iterator[bytes]:
    """A Workload API server stream on an open channel."""
    rpc = ch.unary_stream(f"/SpiffeWorkloadAPI/{method}")
    it: Iterator[bytes] = rpc(b"", metadata=HEADER if header else (), timeout=timeout)
    return it


def fetch_jwt(socket: str | Path, *audience: str, spiffe_id: str = "") -> pb.JWTSVIDResponse:
    raw = unary(socket, "FetchJWTSVID",
                pb.JWTSVIDRequest(audience=list(audience), spiffe_id=spiffe_id).SerializeToString())
    return pb.JWTSVIDResponse.FromString(raw)


def status_of(fn: object, *args: object, **kwargs: object) -> tuple[grpc.StatusCode, str]:
    """The status a call that must fail ended with; an AssertionError if it succeeded."""
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError("call succeeded, expected an error status")


def call(sock: Path | str, method: str, request: bytes = b"", *,
         metadata: Metadata = HEADER, stream: bool = False,
         timeout: float = 10) -> tuple[grpc.StatusCode, str, bytes]:
    """One raw call on any service (`method` is the full path; bytes in, bytes out), never
    raising: (status, details, response). For server streams, the first message only."""
    with channel(sock) as ch:
        try:
            if stream:
                it = ch.unary_stream(method)(request, metadata=metadata, timeout=timeout)
                first: bytes = next(it, b"")
                it.cancel()
                return grpc.StatusCode.OK, "", first
            out: bytes = ch.unary_unary(method)(request, metadata=metadata, timeout=timeout)
            return grpc.StatusCode.OK, "", out
        except grpc.RpcError as e:
            return e.code(), e.details() or "", b""
