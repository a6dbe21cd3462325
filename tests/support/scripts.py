"""Client programs run in their own processes (another uid, another executable, a forked child),
and the helpers that run them. Each prints one line a test can compare for equality."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.daemon import run_as

# Any raw call under any uid: socket, method, hex request, header mode, streaming ("1"/"0").
# Prints "OK <hex response>" or "STATUS <CODE> <details>".
RAW_CLIENT = """
import sys, grpc
sock, method, req, mode, streaming = sys.argv[1:6]
md = {"one": [("workload.spiffe.io", "true")], "none": [],
      "two": [("workload.spiffe.io", "true"), ("workload.spiffe.io", "true")],
      "false": [("workload.spiffe.io", "false")]}[mode]
ch = grpc.insecure_channel("unix:" + sock)
try:
    if streaming == "1":
        it = ch.unary_stream(method)(bytes.fromhex(req), metadata=md, timeout=10)
        out = next(it)
        it.cancel()
    else:
        out = ch.unary_unary(method)(bytes.fromhex(req), metadata=md, timeout=10)
    print("OK", out.hex())
except grpc.RpcError as e:
    print("STATUS", e.code().name, e.details())
# grpcio can hang at interpreter exit with a cancelled stream's threads: leave at once
sys.stdout.flush()
ch.close()
import os
os._exit(0)
"""

# FetchJWTSVID for audience "a": prints "ISSUED" or "REFUSED <CODE>". Run by copied and signed
# executables (the caller's executable is what is attested) and by scripts signed themselves.
FETCH_JWT = """
import sys, grpc
ch = grpc.insecure_channel("unix:" + sys.argv[1])
try:
    ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")(
        b"\\n\\x01a", metadata=[("workload.spiffe.io", "true")], timeout=20)
    print("ISSUED")
except grpc.RpcError as e:
    print("REFUSED", e.code().name)
"""

# The JWT hammer: FetchJWTSVID in a loop, appending each token's jti to a file, reconnecting
# across daemon restarts. argv: socket, output file.
JTI_HAMMER = r"""
import sys, time, grpc, jwt
from ensign.proto import workload_pb2 as pb
sock, out = sys.argv[1], sys.argv[2]
req = pb.JWTSVIDRequest(audience=["crash"]).SerializeToString()
with open(out, "a") as f:
    while True:
        try:
            with grpc.insecure_channel("unix:" + sock) as ch:
                call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
                while True:
                    raw = call(req, metadata=[("workload.spiffe.io", "true")], timeout=5)
                    token = pb.JWTSVIDResponse.FromString(raw).svids[0].svid
                    f.write(jwt.decode(token, options={"verify_signature": False})["jti"] + "\n")
                    f.flush()
        except grpc.RpcError:
            time.sleep(0.02)
"""

# FetchJWTSVID with grpclib over a connection someone else made: the socket `s` to `path` (both
# in scope). Prints "ISSUED" or "REFUSED <STATUS> <message>". The tail of the scripts below.
FETCH_ON_SOCKET = textwrap.dedent("""
    import asyncio
    from grpclib.client import Channel
    from ensign.proto import workload_pb2 as pb
    from ensign.proto.workload_grpc import SpiffeWorkloadAPIStub

    async def main():
        loop = asyncio.get_running_loop()
        ch = Channel(path=path)
        async def create():
            _, proto = await loop.create_unix_connection(ch._protocol_factory, sock=s)
            return proto
        ch._create_connection = create
        try:
            await SpiffeWorkloadAPIStub(ch).FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["a"]), metadata={"workload.spiffe.io": "true"})
            print("ISSUED", flush=True)
        except Exception as e:
            print("REFUSED", getattr(e, "status", e).name, getattr(e, "message", ""), flush=True)
        ch.close()
    asyncio.run(main())
""")

# The fd hand-off: the connecting process exits and a forked child uses its connection.
HANDOFF = textwrap.dedent("""
    import os, socket, sys, time
    path = sys.argv[1]
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)            # the kernel records THIS process as the peer
    if os.fork() != 0:
        os._exit(0)            # the connecting process exits; the child keeps the socket
    time.sleep(0.5)            # let the parent's exit land
""") + FETCH_ON_SOCKET


def raw_as(uid: int, sock: Path, method: str, req: bytes = b"", *, mode: str = "one",
           streaming: bool = False, extra_groups: tuple[int, ...] = ()) -> str:
    """RAW_CLIENT's one line, run under `uid` (and gid, with `extra_groups`)."""
    out = run_as(uid, RAW_CLIENT, str(sock), method, req.hex(), mode, "1" if streaming else "0",
                 extra_groups=extra_groups)
    return out.stdout.strip() or out.stderr.strip()


def fetch_jwt_as(uid: int, sock: Path, audience: str = "a") -> str:
    """FetchJWTSVID for `audience` under `uid`: "OK <hex>" or "STATUS <CODE> <details>"."""
    req = b"\n" + bytes([len(audience)]) + audience.encode()
    return raw_as(uid, sock, "/SpiffeWorkloadAPI/FetchJWTSVID", req)


def handoff(sock: Path) -> subprocess.CompletedProcess[str]:
    """Run HANDOFF against `sock` (the parent exits at once; its child's line arrives on the
    inherited stdout)."""
    return subprocess.run([sys.executable, "-c", HANDOFF, str(sock)], capture_output=True,
                          text=True, timeout=30)


# spiffe-tls peers, each run with its own supplementary group (so its own entry).
# argv: endpoint, port, the SPIFFE ID the peer must have.
TLS_SERVER_GID, TLS_CLIENT_GID = 4242, 4343
TLS_SERVER = """
import sys
from spiffe import SpiffeId, X509Source
from spiffetls import ListenOptions, listen
from spiffetls.tlsconfig.authorize import authorize_id
endpoint, port, peer = sys.argv[1], sys.argv[2], sys.argv[3]
with X509Source(socket_path=endpoint, timeout_in_seconds=15) as source:
    server = listen(f"127.0.0.1:{port}", source,
                    ListenOptions(authorize_fn=authorize_id(SpiffeId(peer))))
    print("LISTENING", str(source.svid.spiffe_id), flush=True)
    conn, _ = server.accept()
    data = conn.recv(1024)
    conn.sendall(b"pong:" + data)
    conn.shutdown()
    conn.close()
    server.close()
"""
TLS_CLIENT = """
import sys
from spiffe import SpiffeId, X509Source
from spiffetls import dial
from spiffetls.tlsconfig.authorize import authorize_id
endpoint, port, peer = sys.argv[1], sys.argv[2], sys.argv[3]
with X509Source(socket_path=endpoint, timeout_in_seconds=15) as source:
    conn = dial(f"127.0.0.1:{port}", source, authorize_fn=authorize_id(SpiffeId(peer)))
    conn.sendall(b"ping")
    print("REPLY", conn.recv(1024).decode(), str(source.svid.spiffe_id), flush=True)
    conn.close()
"""


def spawn_with_group(code: str, gid: int, *args: str) -> subprocess.Popen[str]:
    """Start Python `code` as this uid with supplementary group `gid` (needs root)."""
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, extra_groups=[gid])
