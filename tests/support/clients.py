"""Raw grpcio calls on the Workload API: what a client that does not use py-spiffe sends."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from ensign.proto import workload_pb2 as pb

HEADER = (("workload.spiffe.io", "true"),)


def channel(socket: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{socket}")


def unary(socket: str, method: str, request: bytes, *, header: bool = True,
          timeout: float = 10) -> bytes:
    with channel(socket) as ch:
        call = ch.unary_unary(f"/SpiffeWorkloadAPI/{method}")
        response: bytes = call(request, metadata=HEADER if header else (), timeout=timeout)
        return response


def stream(ch: grpc.Channel, method: str, *, header: bool = True,
           timeout: float | None = None) -> Iterator[bytes]:
    call = ch.unary_stream(f"/SpiffeWorkloadAPI/{method}")
    it: Iterator[bytes] = call(b"", metadata=HEADER if header else (), timeout=timeout)
    return it


def fetch_jwt(socket: str, *audience: str, spiffe_id: str = "") -> pb.JWTSVIDResponse:
    raw = unary(socket, "FetchJWTSVID",
                pb.JWTSVIDRequest(audience=list(audience), spiffe_id=spiffe_id).SerializeToString())
    return pb.JWTSVIDResponse.FromString(raw)


def status_of(fn: object, *args: object, **kwargs: object) -> tuple[grpc.StatusCode, str]:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError("call succeeded, expected an error status")
