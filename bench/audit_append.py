"""Durable audit records per second: Ensign's group commit beside a raw fsync-per-write loop.

Both write the same sealed, hash-chained JSON lines to a file in the same directory, and
both call fsync before counting a record as durable. The raw loop does one write and one
fsync per record (what a naive "durable before release" log does); Ensign's AuditLog lets
64 concurrent issuers share each fsync. Target: >= 5,000 records/s and >= 1.0x the raw loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ensign.daemon.audit.event import GENESIS, AuditEvent, Process, canonical, seal
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.config import AuditConfig

from ._stats import meets, ratio, summarize

NAME = "audit_durable_records"
TARGET = ">= 1.0"
FLOOR = 5000.0
CONCURRENCY = 64

EVENT = AuditEvent(
    type="svid.issued", agent_id="agt_01JBENCH0000000000000000", entry_id="agt_01JBENCH0",
    spiffe_id="spiffe://example.org/agent/agt_01JBENCH0000000000000000", roles=("reader",),
    process=Process(pid=4242, uid=1000, gid=1000, exe_sha256="ab" * 32), audience=("bench",),
    details={"kind": "jwt", "jti": "x" * 22, "ttl": 300},
)


def _raw_loop(directory: Path, seconds: float) -> float:
    path = directory / "raw.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    prev, n = GENESIS, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        record = seal(EVENT.body(), seq=n + 1, prev=prev, chain="bench", at=datetime.now(UTC))
        prev = record["hash"]
        os.write(fd, canonical(record) + b"\n")
        os.fsync(fd)
        n += 1
    elapsed = time.perf_counter() - start
    os.close(fd)
    path.unlink()
    return n / elapsed


async def _group_commit(directory: Path, seconds: float) -> float:
    data = directory / "data"
    data.mkdir()
    log = AuditLog(AuditConfig(checkpoint_every=1000, checkpoint_interval=timedelta(seconds=60)),
                   data)
    log.open()
    count = 0
    stop = time.perf_counter() + seconds

    async def issuer() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await log.record(EVENT)
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*(issuer() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    await log.close()
    shutil.rmtree(data)
    return count / elapsed


def run(quick: bool) -> dict[str, dict[str, Any]]:
    reps, seconds = (2, 1.5) if quick else (5, 3.0)
    # On disk, not tmpfs: fsync must cost what it costs on a real node.
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-audit-", dir="/var/tmp"))
    runs: dict[str, list[float]] = {"baseline": [], "ensign": []}
    try:
        for rep in range(reps):
            runs["baseline"].append(_raw_loop(tmp, seconds))
            runs["ensign"].append(asyncio.run(_group_commit(tmp, seconds)))
            print(f"  {NAME} round {rep + 1}/{reps}: raw {runs['baseline'][-1]:8.0f}/s, "
                  f"ensign {runs['ensign'][-1]:8.0f}/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ensign, baseline = summarize(runs["ensign"]), summarize(runs["baseline"])
    value = ratio(ensign["median"], baseline["median"])
    return {NAME: {
        "unit": "records/s",
        "ensign": ensign,
        "baseline": baseline,
        "ratio": value,
        "target": TARGET,
        "met": meets(value, TARGET) and ensign["median"] >= FLOOR,
        "note": f"{CONCURRENCY} concurrent issuers share each fsync; floor {FLOOR:.0f} records/s "
                f"({'met' if ensign['median'] >= FLOOR else 'MISSED'})",
        "setup": {"concurrency": CONCURRENCY, "reps": reps, "seconds": seconds},
    }}
