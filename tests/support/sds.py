"""A raw grpcio SDS client: what Envoy sends, one message at a time, or garbage."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

SERVICE = "/envoy.service.secret.v3.SecretDiscoveryService"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def discovery_request(*names: str, version: str = "", nonce: str = "", type_url: str = SECRET,
                      nack: str = "") -> bytes:
    req = discovery_pb2.DiscoveryRequest(version_info=version, resource_names=list(names),
                                         type_url=type_url, response_nonce=nonce)
    req.node.id, req.node.cluster = "test", "test"
    if nack:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=nack))
    return req.SerializeToString()


def secrets(response: Any) -> dict[str, Any]:
    out = {}
    for r in response.resources:
        s = secret_pb2.Secret()
        assert r.Unpack(s)
        out[s.name] = s
    return out


def fetch(socket: str, *names: str, type_url: str = SECRET) -> Any:
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        raw = ch.unary_unary(f"{SERVICE}/FetchSecrets")(
            discovery_request(*names, type_url=type_url), timeout=10)
    return discovery_pb2.DiscoveryResponse.FromString(raw)


class SdsStream:
    """StreamSecrets, driven step by step: `send` a request (or raw bytes), `recv` a response."""

    def __init__(self, socket: str, method: str = "StreamSecrets") -> None:
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._ch = grpc.insecure_channel(f"unix:{socket}")
        self._call = self._ch.stream_stream(f"{SERVICE}/{method}")(
            iter(self._outbox.get, None), timeout=60)
        self._it: Iterator[bytes] = self._call

    def send(self, raw: bytes) -> None:
        self._outbox.put(raw)

    def recv(self) -> Any:
        return discovery_pb2.DiscoveryResponse.FromString(next(self._it))

    def ack(self, response: Any, *names: str) -> None:
        self.send(discovery_request(*names, version=response.version_info,
                                    nonce=response.nonce))

    def error(self) -> tuple[grpc.StatusCode, str]:
        """The status the stream ended with (it must end with an error)."""
        try:
            for _ in self._it:
                pass
        except grpc.RpcError as e:
            return e.code(), e.details()
        raise AssertionError("stream ended with OK, expected an error status")

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._ch.close()

    def __enter__(self) -> SdsStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
