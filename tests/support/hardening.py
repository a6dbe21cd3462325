"""Shared helpers of the hardening suites: soak switch, /proc readings, health, sockets."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import grpc
from grpclib.health.v1 import health_pb2

from tests.support.clients import call
from tests.support.daemon import Daemon

SOAK = os.environ.get("ENSIGN_SOAK", "") not in ("", "0")


def soak(short: Any, long: Any) -> Any:
    """The short-form value in `make test`, the long one in `make soak`."""
    return long if SOAK else short


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle_fds(pid: int, baseline: int, timeout: float = 10.0) -> int:
    """Wait for the daemon's fd count to come back to `baseline`; return the last count."""
    deadline = time.monotonic() + timeout
    count = fd_count(pid)
    while count > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
        count = fd_count(pid)
    return count


def healthy(d: Daemon, timeout: float = 10) -> bool:
    """The daemon process runs and its Workload API socket answers a health check."""
    if not d.alive():
        return False
    code, _, raw = call(d.socket, "/grpc.health.v1.Health/Check",
                        health_pb2.HealthCheckRequest().SerializeToString(), metadata=(),
                        timeout=timeout)
    return code == grpc.StatusCode.OK and health_pb2.HealthCheckResponse.FromString(raw).status == 1


def socket_answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
