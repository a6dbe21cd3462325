"""`ensign --help` (interpreter, CLI import, every subcommand's parser), CPU time per call, against
a bare `python -c "import grpclib.client, pydantic"` started the same way.

Every `ensign` command pays this before it does anything, and the test suite makes hundreds of
calls on two cores: CPU time (user + system of the child), not wall time, is what they compete
for, and it varies less on a shared machine. Runs alternate between the two commands; the
figure is the median per call. Target: <= 2.0 (the CLI imports only what its commands share;
each command imports its own libraries when it runs).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._stats import meets, ratio, summarize

NAME = "cli_start_cpu_ms"
TARGET = "<= 2.0"
ENSIGN = [str(Path(sys.executable).with_name("ensign")), "--help"]
BASELINE = [sys.executable, "-c", "import grpclib.client, pydantic"]


def _cpu_ms(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return 1000 * ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def run(quick: bool) -> dict[str, Any]:
    reps = 5 if quick else 15
    runs: dict[str, list[float]] = {"ensign": [], "baseline": []}
    for argv in (ENSIGN, BASELINE):  # once each first: the page cache, the .pyc files
        _cpu_ms(argv)
    for _ in range(reps):
        runs["ensign"].append(_cpu_ms(ENSIGN))
        runs["baseline"].append(_cpu_ms(BASELINE))
    ensign, baseline = summarize(runs["ensign"]), summarize(runs["baseline"])
    r = ratio(ensign["median"], baseline["median"])
    return {NAME: {"ensign": ensign, "baseline": baseline, "unit": "ms", "ratio": r,
                   "target": TARGET, "met": meets(r, TARGET),
                   "note": "CPU time of `ensign --help` / `python -c 'import grpclib.client, "
                           "pydantic'`, median per call"}}
