"""Peer identity from the kernel, on a plain socket: SO_PEERCRED, pidfd and start time pin the
caller, and its exit (or another process under its pid) is detected."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ensign.daemon.errors import CallerGone
from ensign.daemon.identity import check_alive
from ensign.daemon.server import identify


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
