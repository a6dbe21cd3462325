"""JWT-SVID fetches per second from 8 client processes, warm: the daemon against a bare echo.

Both servers run for the whole benchmark; rounds alternate between them (echo, daemon, echo,
...) so that a noisy machine hits both alike. The ratio is median(daemon) / median(echo).

Alongside, each server's own CPU time per call is recorded ("server_cpu_us_per_call"): on a
shared machine, where the clients and other work take CPU from the server, it is the steadier
view of what the daemon costs beyond the bare grpclib stack.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensign.proto import workload_pb2 as pb

from . import _servers
from ._clients import ClientPool, Task
from ._stats import meets, ratio, summarize

NAME = "jwt_fetch_8_clients"
CPU_NAME = "jwt_cpu_per_1000_fetches"
CLIENTS = 8
METHOD = "/SpiffeWorkloadAPI/FetchJWTSVID"
METADATA = (("workload.spiffe.io", "true"),)
TARGET = ">= 0.8"


@dataclass(frozen=True, slots=True)
class Plan:
    reps: int  # rounds per server
    warmup: float  # seconds per round before counting
    duration: float  # seconds counted per round


FULL = Plan(reps=5, warmup=1.0, duration=5.0)
QUICK = Plan(reps=2, warmup=1.0, duration=2.0)


def _preflight(sock: Path, request: bytes) -> int:
    """One call, checked: the server answers one JWT-SVID. Returns the token's length."""
    import grpc  # type: ignore[import-untyped,unused-ignore]

    with grpc.insecure_channel(f"unix:{sock}") as channel:
        raw = channel.unary_unary(METHOD)(request, metadata=METADATA, timeout=30)
    response = pb.JWTSVIDResponse.FromString(raw)
    if len(response.svids) != 1:
        raise RuntimeError(f"{sock}: expected 1 JWT-SVID, got {len(response.svids)}")
    return len(response.svids[0].svid)


def run(quick: bool) -> dict[str, dict[str, Any]]:
    plan = QUICK if quick else FULL
    request = pb.JWTSVIDRequest(audience=["bench"]).SerializeToString()
    runs: dict[str, list[float]] = {"baseline": [], "ensign": []}
    cpu_us: dict[str, list[float]] = {"baseline": [], "ensign": []}
    errors = {"baseline": 0, "ensign": 0}
    samples: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-", dir="/tmp"))
    try:
        with (
            _servers.daemon(tmp) as daemon,
            _servers.echo(tmp) as echo,
            ClientPool(CLIENTS) as pool,
        ):
            servers = {"baseline": echo, "ensign": daemon}
            svid_chars = {side: _preflight(s.socket, request) for side, s in servers.items()}
            for rep in range(plan.reps):
                for side, server in servers.items():
                    task = Task(str(server.socket), METHOD, request, METADATA, plan.warmup,
                                plan.duration)
                    cpu = server.cpu_seconds()
                    r = pool.run(task)
                    cpu = server.cpu_seconds() - cpu
                    runs[side].append(r.rate)
                    cpu_us[side].append(1e6 * cpu / max(r.attempts, 1))
                    errors[side] += r.errors
                    samples.extend(f"{side}: {s}" for s in r.error_samples)
                    print(f"  {NAME} round {rep + 1}/{plan.reps} {side:8}: {r.rate:8.1f} calls/s,"
                          f" server {cpu_us[side][-1]:5.0f} us CPU/call"
                          f"{f', {r.errors} errors' if r.errors else ''}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ensign, baseline = summarize(runs["ensign"]), summarize(runs["baseline"])
    value = ratio(ensign["median"], baseline["median"])
    figure: dict[str, Any] = {
        "unit": "calls/s",
        "ensign": {**ensign, "errors": errors["ensign"]},
        "baseline": {**baseline, "errors": errors["baseline"]},
        "ratio": value,
        "target": TARGET,
        "met": meets(value, TARGET),
        "errors": sum(errors.values()),
        "server_cpu_us_per_call": {side: summarize(v) for side, v in cpu_us.items()},
        "setup": {
            "clients": CLIENTS, "reps": plan.reps, "warmup_s": plan.warmup,
            "duration_s": plan.duration, "cpus": os.cpu_count(), "svid_chars": svid_chars,
        },
    }
    cpu = figure["server_cpu_us_per_call"]
    figure["note"] = (f"server CPU per call (median): ensign {cpu['ensign']['median']:.0f} us,"
                      f" baseline {cpu['baseline']['median']:.0f} us")
    if samples:
        figure["error_samples"] = samples[:10]
    # The same rounds, read as server CPU (utime + stime from /proc) per 1,000 calls: us per
    # call is numerically ms per 1,000 calls.
    e_cpu, b_cpu = cpu["ensign"], cpu["baseline"]
    cpu_figure: dict[str, Any] = {
        "unit": "CPU ms", "ensign": e_cpu, "baseline": b_cpu,
        "ratio": ratio(e_cpu["median"], b_cpu["median"]), "target": "report", "met": True,
        "note": f"server CPU per 1,000 JWT fetches (8 clients, saturated): ensign "
                f"{e_cpu['median'] / 1000:.3f} s, bare grpclib echo {b_cpu['median'] / 1000:.3f} s",
    }
    return {NAME: figure, CPU_NAME: cpu_figure}
