"""A connection handed to another process gets no identity from the real daemon (the pinning
itself is unit-tested in tests/unit/server/test_peercred.py)."""

from __future__ import annotations

from tests.support.daemon import Daemon
from tests.support.scripts import handoff


def test_socket_handed_to_another_process_gets_no_identity(daemon: Daemon) -> None:
    # Root's entry matches the child too; what must stop it is that the connecting process is gone.
    daemon.register("root", "unix:uid:0")
    out = handoff(daemon.socket)
    assert out.stdout.startswith("REFUSED UNAUTHENTICATED"), out.stdout + out.stderr
    assert daemon.alive()
