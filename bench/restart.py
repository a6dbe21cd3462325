"""Restart after kill -9: exec -> first JWT-SVID served, against the bare grpclib server.

The daemon runs on a data dir it has used before (CA, registry and audit log exist, the last
run ended by SIGKILL), so each round measures what an operator waits for after a crash:
start, open and check the audit log's tail, load the registry, bind, attest and answer. The
baseline is the bare grpclib echo server (bench/echo_server.py) started the same way and
answering the same FetchJWTSVID. Rounds alternate; the ratio is the median daemon time over
the median echo time. The absolute figure is what the kill -9 test (tests/hardening/
test_crash.py) used to assert: under 1 s on a quiet machine.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ensign.proto import workload_pb2 as pb

from . import _servers
from ._stats import meets, ratio, summarize

NAME = "restart_to_first_jwt_ms"
METHOD = "/SpiffeWorkloadAPI/FetchJWTSVID"
METADATA = (("workload.spiffe.io", "true"),)
TARGET = "<= 2.0"
POLL = 0.005


def _first_answer(sock: Path, request: bytes, proc: subprocess.Popen[bytes], log: Path) -> None:
    import grpc  # type: ignore[import-untyped,unused-ignore]

    deadline = time.monotonic() + _servers.START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if sock.exists():
            with grpc.insecure_channel(f"unix:{sock}") as channel:
                try:
                    channel.unary_unary(METHOD)(request, metadata=METADATA, timeout=5)
                    return
                except grpc.RpcError as e:
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise RuntimeError(f"{METHOD}: {e.code().name} {e.details()}") from None
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sock} did not answer within {_servers.START_TIMEOUT:g}s")
        time.sleep(POLL)


def _timed(argv: list[str], sock: Path, request: bytes, log: Path) -> float:
    """Milliseconds from exec to the first FetchJWTSVID answered; the process is then killed
    with SIGKILL, as a crash would."""
    with log.open("ab") as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=_servers.ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        _first_answer(sock, request, proc, log)
        return (time.monotonic() - started) * 1000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def run(quick: bool) -> dict[str, dict[str, Any]]:
    rounds = 3 if quick else 9
    request = pb.JWTSVIDRequest(audience=["bench"]).SerializeToString()
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-restart-"))
    try:
        with _servers.daemon(tmp):  # first start: CA, registry, the agent "bench"
            pass
        daemon_argv = [sys.executable, "-m", "ensign.daemon", "daemon",
                       "--config", str(tmp / "ensign.toml")]
        echo_sock = tmp / "echo.sock"
        echo_argv = [sys.executable, "-m", "bench.echo_server", "--socket", str(echo_sock)]
        ours: list[float] = []
        base: list[float] = []
        for _ in range(rounds):
            ours.append(_timed(daemon_argv, tmp / "agent.sock", request, tmp / "daemon.log"))
            base.append(_timed(echo_argv, echo_sock, request, tmp / "echo.log"))
            echo_sock.unlink(missing_ok=True)  # the echo server binds a fresh path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ensign, baseline = summarize(ours), summarize(base)
    r = ratio(ensign["median"], baseline["median"])
    return {NAME: {
        "ensign": ensign, "baseline": baseline, "unit": "ms", "ratio": r, "target": TARGET,
        "met": meets(r, TARGET),
        "note": (f"exec -> first JWT-SVID after kill -9, {rounds} rounds; "
                 "baseline: the bare grpclib server's exec -> first answer"),
    }}
