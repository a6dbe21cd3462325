"""Crash bound of a repeated JWT-SVID delivery (issue 22; README *Audit trail*, SECURITY.md).

A token's first release waits for its `svid.issued` record to be durable. Delivering the same
cached token again is recorded without holding the reply, so a kill -9 may lose the records of
such deliveries, and only those still queued or in the batch being written: at most
DEFER_MAX (512) per crash. Eight clients hammer FetchJWTSVID through 12 kills -9, with tokens that
expire every 4 s (a mix of first releases and repeated deliveries); afterwards every token any
client received has its record, the log verifies, and per crash no more than the bound of
(client process, token) deliveries lack one.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ensign.daemon.audit.log import DEFER_MAX
from ensign.daemon.audit.query import read_records
from tests.support.daemon import kill_and_restart, make_daemon
from tests.support.scripts import JTI_HAMMER

KILLS = 12


def test_a_crash_loses_only_repeated_deliveries_of_the_last_window(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, '[svid]\njwt_ttl = "4s"\n')
    d.register("deliveries", "unix:uid:0")
    outs = [short_tmp / f"client{i}.txt" for i in range(8)]
    clients = [subprocess.Popen([sys.executable, "-c", JTI_HAMMER, str(d.socket), str(o)])
               for o in outs]
    rng = random.Random(22)
    try:
        kill_and_restart(d, KILLS, rng, 0.3, 0.8)
        time.sleep(0.5)
    finally:
        for c in clients:
            c.kill()
            c.wait()
    assert d.stop() == 0  # a clean stop writes every record it holds
    verified = d.cli("audit", "verify", "--data-dir", str(d.data_dir))
    assert verified.stdout.startswith("audit ok"), verified.stdout

    received: Counter[tuple[int, str]] = Counter()
    for client, out in zip(clients, outs, strict=True):
        for line in out.read_text().splitlines():
            if line.strip():
                received[(client.pid, line.strip())] += 1
    recorded: Counter[tuple[int, str]] = Counter(
        (int(r["process"]["pid"]), r["details"]["jti"]) for r in read_records(d.data_dir / "audit")
        if r["type"] == "svid.issued" and r["details"]["kind"] == "jwt")
    tokens = {jti for _, jti in received}
    assert len(tokens) >= 3, "too few tokens crossed the crashes to prove anything"
    assert sum(received.values()) >= 4 * len(tokens), "too few repeated deliveries"
    # Never a token's first record: every token a client holds is in the trail.
    assert tokens <= {jti for _, jti in recorded}
    # Only repeated deliveries of the last group-commit window before each crash.
    lost = sum(max(0, n - recorded[key]) for key, n in received.items())
    assert lost <= KILLS * DEFER_MAX, f"{lost} deliveries without a record"
