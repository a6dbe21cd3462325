"""A bare grpclib server for the Workload API's FetchJWTSVID path: the baseline.

It runs the same generated servicer base, protobuf classes and grpclib defaults as the daemon
on the same kind of socket (Unix), and answers every FetchJWTSVID with one fixed JWT-SVID of
about the daemon's size. What the daemon takes beyond this is the daemon's own work.

    python -m bench.echo_server --socket /tmp/x/echo.sock
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from ensign.proto import workload_pb2 as pb
from ensign.proto.workload_grpc import SpiffeWorkloadAPIBase

FAKE_SVID = "eyJhbGciOiJFUzI1NiJ9." + "x" * 300 + "." + "s" * 86  # ~400 chars, like an ES256 JWT
RESPONSE = pb.JWTSVIDResponse(
    svids=[pb.JWTSVID(spiffe_id="spiffe://example.org/agent/bench", svid=FAKE_SVID)]
)


class EchoWorkloadApi(SpiffeWorkloadAPIBase):
    async def FetchJWTSVID(self, stream: Stream[pb.JWTSVIDRequest, pb.JWTSVIDResponse]) -> None:
        await stream.recv_message()
        await stream.send_message(RESPONSE)

    async def FetchX509SVID(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)

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
