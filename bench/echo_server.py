"""A bare grpclib server for the Workload API's FetchJWTSVID path: the baseline.

It runs the same generated servicer base, protobuf classes and grpclib defaults as the daemon
on the same kind of socket (Unix), and answers every FetchJWTSVID with one fixed JWT-SVID of
about the daemon's size, and every FetchX509SVID with one fixed X.509-SVID response (leaf, key
and bundle minted once at start) before ending the stream. What the daemon takes beyond this is
the daemon's own work.

    python -m bench.echo_server --socket /tmp/x/echo.sock
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from ensign.daemon import keys
from ensign.daemon.issuing import mint_x509_svid, new_authority
from ensign.daemon.spiffe_id import SpiffeId
from ensign.proto import workload_pb2 as pb
from ensign.proto.workload_grpc import SpiffeWorkloadAPIBase

FAKE_SVID = "eyJhbGciOiJFUzI1NiJ9." + "x" * 300 + "." + "s" * 86  # ~400 chars, like an ES256 JWT
RESPONSE = pb.JWTSVIDResponse(
    svids=[pb.JWTSVID(spiffe_id="spiffe://example.org/agent/bench", svid=FAKE_SVID)]
)


def x509_response() -> pb.X509SVIDResponse:
    """One X.509-SVID response as the daemon sends it (ec-p256 leaf, PKCS#8 key, CA bundle)."""
    now = datetime.now(UTC)
    authority = new_authority("example.org", "ec-p256", timedelta(days=1), now)
    svid = mint_x509_svid(authority=authority.signing(),
                          spiffe_id=SpiffeId.parse("spiffe://example.org/agent/bench"),
                          key=keys.generate("ec-p256"), ttl=timedelta(hours=1), now=now)
    return pb.X509SVIDResponse(svids=[pb.X509SVID(
        spiffe_id=svid.spiffe_id, x509_svid=svid.chain_der(),
        x509_svid_key=keys.to_pkcs8_der(svid.key),
        bundle=authority.cert.public_bytes(Encoding.DER))])


class EchoWorkloadApi(SpiffeWorkloadAPIBase):
    def __init__(self) -> None:
        self._x509 = x509_response()

    async def FetchJWTSVID(self, stream: Stream[pb.JWTSVIDRequest, pb.JWTSVIDResponse]) -> None:
        await stream.recv_message()
        await stream.send_message(RESPONSE)

    async def FetchX509SVID(
        self, stream: Stream[pb.X509SVIDRequest, pb.X509SVIDResponse]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(self._x509)

    async def FetchX509Bundles(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)

    async def FetchJWTBundles(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)

    async def ValidateJWTSVID(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)

    async def FetchWITSVID(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)

    async def FetchWITBundles(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)


async def serve(path: str) -> None:
    server = Server([EchoWorkloadApi()])
    await server.start(path=path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    asyncio.run(serve(parser.parse_args().socket))


if __name__ == "__main__":
    main()
