"""The example document service (examples/docs_service.py) served by real ASGI servers in
subprocesses: uvicorn over HTTP, anycorn over mutual TLS (it hands the client certificate to the
app). Each runs in a supplementary group so the daemon attests it as the registered service."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.daemon import REPO, Daemon
from tests.support.net import free_port

DOCS = "https://docs.example.org"


@contextmanager
def docs_service(d: Daemon, gid: int, log: Path, *, issuer: str = "", issuer_ca: Path | None = None,
                 tls: tuple[Path, Path, Path] | None = None, queue: int = 10_000
                 ) -> Iterator[str]:
    """Serve the example; yields its base URL (https://localhost:PORT with `tls` = the service's
    SVID files: certificate, key, bundle; client certificates required)."""
    port = free_port()
    env = {**os.environ, "ENSIGN_AUDIENCE": DOCS, "ENSIGN_ISSUER": issuer,
           "ENSIGN_ISSUER_CA": str(issuer_ca or ""), "SPIFFE_ENDPOINT_SOCKET": d.endpoint,
           "ENSIGN_ACTIONS_QUEUE": str(queue), "PYTHONPATH": str(REPO)}
    if tls is None:
        cmd = [sys.executable, "-m", "uvicorn", "examples.docs_service:app", "--host",
               "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        url = f"http://127.0.0.1:{port}"
    else:
        cert, key, bundle = tls
        cmd = [sys.executable, "-m", "anycorn", "examples.docs_service:app", "--bind",
               f"127.0.0.1:{port}", "--certfile", str(cert), "--keyfile", str(key),
               "--ca-certs", str(bundle), "--cert-reqs", "2"]
        url = f"https://localhost:{port}"
    out = log.open("ab")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                            extra_groups=[gid])
    try:
        _wait_for_port(port, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"service did not start:\n{log.read_text()}")


def wait_for_records(d: Daemon, count: int, *args: str,
                     timeout: float = 60) -> list[dict[str, Any]]:
    """`audit list --type action` until it holds `count` records (the service reports them in
    the background, after its responses)."""
    deadline = time.monotonic() + timeout
    while True:
        records = d.audit("--type", "action", *args)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def prometheus_value(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus text; 0 when absent."""
    prefix = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return 0.0
