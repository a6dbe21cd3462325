"""TCP ports for tests that listen on the loopback interface."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port free at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
