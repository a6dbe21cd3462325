"""spiffe-tls: two registered workloads complete an mTLS handshake, each authorizing the other."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.support.daemon import Daemon

SERVER_GID, CLIENT_GID = 4242, 4343

_SERVER = """
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

_CLIENT = """
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(code: str, gid: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, extra_groups=[gid],
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="setting supplementary groups needs root")
def test_mtls_between_two_registered_workloads(daemon: Daemon) -> None:
    server_id = daemon.register("tls-server", "unix:uid:0", f"unix:supplementary_gid:{SERVER_GID}")
    client_id = daemon.register("tls-client", "unix:uid:0", f"unix:supplementary_gid:{CLIENT_GID}")
    port = str(_free_port())
    server = _spawn(_SERVER, SERVER_GID, daemon.endpoint, port, str(client_id["spiffe_id"]))
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.split() == ["LISTENING", server_id["spiffe_id"]], server.stderr.read()
        client = _spawn(_CLIENT, CLIENT_GID, daemon.endpoint, port, str(server_id["spiffe_id"]))
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        assert out.split() == ["REPLY", "pong:ping", client_id["spiffe_id"]]
        server.wait(timeout=30)
        assert server.returncode == 0, server.stderr.read()
    finally:
        server.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="setting supplementary groups needs root")
def test_mtls_refuses_a_peer_with_the_wrong_id(daemon: Daemon) -> None:
    daemon.register("tls-server", "unix:uid:0", f"unix:supplementary_gid:{SERVER_GID}")
    client_id = daemon.register("tls-client", "unix:uid:0", f"unix:supplementary_gid:{CLIENT_GID}")
    port = str(_free_port())
    # The server only accepts a client with some other ID: the handshake must fail.
    server = _spawn(_SERVER, SERVER_GID, daemon.endpoint, port, "spiffe://example.org/other")
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("LISTENING")
        client = _spawn(_CLIENT, CLIENT_GID, daemon.endpoint, port, "spiffe://example.org/x")
        out, _ = client.communicate(timeout=30)
        assert client.returncode != 0
        assert "REPLY" not in out
        assert client_id["spiffe_id"]
    finally:
        server.kill()
