"""The core JWT-fetch throughput with anomaly detection on, beside the same daemon with it off,
in the same run (rounds alternate). Target: detection costs at most 10% (ratio >= 0.9)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ensign.proto import workload_pb2 as pb

from . import _servers
from ._clients import ClientPool, Task
from ._stats import meets, ratio, summarize
from .jwt_fetch import CLIENTS, FULL, METADATA, METHOD, QUICK, _preflight

NAME = "jwt_fetch_anomaly_on_vs_off"
TARGET = ">= 0.9"
# A short learning period so detection is fully active (not just learning) while measured.
ON = '[anomaly]\nenabled = true\nlearning_period = "1s"\n'
OFF = "[anomaly]\nenabled = false\n"


def run(quick: bool) -> dict[str, dict[str, Any]]:
    plan = QUICK if quick else FULL
    request = pb.JWTSVIDRequest(audience=["bench"]).SerializeToString()
    runs: dict[str, list[float]] = {"ensign": [], "baseline": []}
    errors = 0
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-anomaly-", dir="/tmp"))
    (tmp / "on").mkdir()
    (tmp / "off").mkdir()
    try:
        with (
            _servers.daemon(tmp / "on", extra_config=ON) as on,
            _servers.daemon(tmp / "off", extra_config=OFF) as off,
            ClientPool(CLIENTS) as pool,
        ):
            servers = {"baseline": off, "ensign": on}
            for s in servers.values():
                _preflight(s.socket, request)
            for rep in range(plan.reps):
                for side, server in servers.items():
                    r = pool.run(Task(str(server.socket), METHOD, request, METADATA,
                                      plan.warmup, plan.duration))
                    runs[side].append(r.rate)
                    errors += r.errors
                    print(f"  {NAME} round {rep + 1}/{plan.reps} {side:8}: {r.rate:8.1f} calls/s",
                          file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    on_s, off_s = summarize(runs["ensign"]), summarize(runs["baseline"])
    value = ratio(on_s["median"], off_s["median"])
    return {NAME: {"unit": "calls/s", "ensign": on_s, "baseline": off_s, "ratio": value,
                   "target": TARGET, "met": meets(value, TARGET) and errors == 0,
                   "errors": errors,
                   "note": "ensign = detection on (learned), baseline = the same daemon with "
                           "detection off"}}
