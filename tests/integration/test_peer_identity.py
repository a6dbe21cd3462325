"""Peer identity from the kernel: SO_PEERCRED, pidfd and start time, and the PID-reuse guard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from ensign.daemon.errors import CallerGone
from ensign.daemon.identity import check_alive
from ensign.daemon.server import identify
from tests.support.daemon import Daemon


def test_caller_is_pinned_and_its_exit_detected(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    child = subprocess.Popen(
        [sys.executable, "-c",
         f"import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect({str(path)!r}); "
         "print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        conn, _ = server.accept()
        pinned = identify(conn)
        assert pinned.problem is None and pinned.caller is not None
        caller = pinned.caller
        assert (caller.pid, caller.uid, caller.gid) == (child.pid, os.getuid(), os.getgid())
        check_alive(caller)  # still the same process
        with pytest.raises(CallerGone, match="another process"):
            check_alive(replace(caller, start_ticks=caller.start_ticks + 1, pidfd=None))
    finally:
        child.communicate("")
    with pytest.raises(CallerGone, match="exited"):
        check_alive(caller)
    conn.close()
    server.close()


_HANDOFF = textwrap.dedent("""
    import asyncio, os, socket, sys
    from grpclib.client import Channel
    from ensign.proto import workload_pb2 as pb
    from ensign.proto.workload_grpc import SpiffeWorkloadAPIStub

    path = sys.argv[1]
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)            # the kernel records THIS process as the peer
    if os.fork() != 0:
        os._exit(0)            # the connecting process exits; the child keeps the socket
    import time
    time.sleep(0.5)            # let the parent's exit land

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


def test_socket_handed_to_another_process_gets_no_identity(daemon: Daemon) -> None:
    # Root's entry matches the child too; what must stop it is that the connecting process is gone.
    daemon.register("root", "unix:uid:0")
    out = subprocess.run([sys.executable, "-c", _HANDOFF, str(daemon.socket)],
                         capture_output=True, text=True, timeout=30)
    # The parent exits at once; wait for the child's line on the inherited stdout.
    assert "REFUSED UNAUTHENTICATED" in out.stdout, out.stdout + out.stderr
    assert daemon.alive()
