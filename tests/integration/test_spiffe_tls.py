"""spiffe-tls: two registered workloads complete an mTLS handshake, each authorizing the other."""

from __future__ import annotations

from tests.support.daemon import Daemon, needs_root
from tests.support.net import free_port
from tests.support.scripts import TLS_CLIENT, TLS_SERVER, spawn_with_group
from tests.support.scripts import TLS_CLIENT_GID as CLIENT_GID
from tests.support.scripts import TLS_SERVER_GID as SERVER_GID


@needs_root
def test_mtls_between_two_registered_workloads(daemon: Daemon) -> None:
    server_id = daemon.register("tls-server", "unix:uid:0", f"unix:supplementary_gid:{SERVER_GID}")
    client_id = daemon.register("tls-client", "unix:uid:0", f"unix:supplementary_gid:{CLIENT_GID}")
    port = str(free_port())
    server = spawn_with_group(TLS_SERVER, SERVER_GID, daemon.endpoint, port,
                              str(client_id["spiffe_id"]))
    try:
        assert server.stdout is not None and server.stderr is not None
        line = server.stdout.readline()
        assert line.split() == ["LISTENING", server_id["spiffe_id"]], server.stderr.read()
        client = spawn_with_group(TLS_CLIENT, CLIENT_GID, daemon.endpoint, port,
                                  str(server_id["spiffe_id"]))
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        assert out.split() == ["REPLY", "pong:ping", client_id["spiffe_id"]]
        server.wait(timeout=30)
        assert server.returncode == 0, server.stderr.read()
    finally:
        server.kill()


@needs_root
def test_mtls_refuses_a_peer_with_the_wrong_id(daemon: Daemon) -> None:
    server_id = daemon.register("tls-server", "unix:uid:0", f"unix:supplementary_gid:{SERVER_GID}")
    daemon.register("tls-client", "unix:uid:0", f"unix:supplementary_gid:{CLIENT_GID}")
    port = str(free_port())
    # The server only accepts a client with some other ID: the handshake must fail.
    server = spawn_with_group(TLS_SERVER, SERVER_GID, daemon.endpoint, port,
                              "spiffe://example.org/other")
    try:
        assert server.stdout is not None and server.stderr is not None
        line = server.stdout.readline()
        assert line.split() == ["LISTENING", server_id["spiffe_id"]], server.stderr.read()
        client = spawn_with_group(TLS_CLIENT, CLIENT_GID, daemon.endpoint, port,
                                  "spiffe://example.org/x")
        out, err = client.communicate(timeout=30)
        # Nothing reaches the application on either side: no reply, and the server's accept
        # ends in an error rather than a served connection.
        assert (client.returncode, out) == (1, ""), (client.returncode, out, err)
        server.wait(timeout=30)
        assert server.returncode == 1, server.stderr.read()
    finally:
        server.kill()
