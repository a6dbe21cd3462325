"""Issue 15 item 3: callers naming a FIFO or a huge file cannot stall attestation for others.

Callers of uid 65534 run executables whose Sigstore bundle beside them is a FIFO (an open for
reading blocks until a writer comes), or that are 64 GiB sparse files (hours of hashing). With
enough of them every attestation thread was blocked and everyone else was refused. Now every
file is opened O_NONBLOCK, must be regular and under the size cap, and each attestor's work
runs on its own threads with a share per uid.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ensign.attestors._bounded import Bounded
from tests.support.daemon import NOBODY, Daemon, make_daemon, nobody_site_packages
from tests.support.sigstore import PrivateSigstore

CLIENT = """
import os, sys
sys.path.insert(0, sys.argv[2])
import grpc
ch = grpc.insecure_channel("unix:" + sys.argv[1])
call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
future = call.future(b"\\n\\x01a", metadata=[("workload.spiffe.io", "true")], timeout=60)
print("SENT", flush=True)
try:
    future.result()
    print("ISSUED", os.getpid(), flush=True)
except grpc.RpcError as e:
    print("REFUSED", e.code().name, os.getpid(), flush=True)
"""
FIFO_CALLERS, HUGE_CALLERS = 8, 3  # more than the 6 threads asyncio gives a 2-core machine


def _python_copy(dst: Path, size: int | None = None) -> Path:
    shutil.copy2(os.path.realpath(sys.executable), dst)
    if size is not None:
        os.truncate(dst, size)  # sparse: takes no disk, but hashing reads every byte
    return dst


def _start(exe: Path, client: Path, d: Daemon, uid: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(exe), str(client), str(d.socket), str(nobody_site_packages())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PATH": "/usr/bin:/bin"}, user=uid, group=uid, extra_groups=[])


def _outcome(output: str) -> str:
    lines = [x for x in output.splitlines() if x.startswith(("ISSUED", "REFUSED"))]
    return lines[-1] if lines else f"no outcome in {output!r}"


def test_fifo_bundles_and_huge_executables_do_not_starve_other_callers(
        short_tmp: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("cross-uid callers need root")
    fulcio = PrivateSigstore()
    (short_tmp / "tr.json").write_text(json.dumps(fulcio.trusted_root()))
    (short_tmp / "bundles").mkdir()
    d = make_daemon(short_tmp, "[attestors.sigstore]\nenabled = true\n"
                    f'trusted_root = "{short_tmp / "tr.json"}"\n'
                    f'bundle_dirs = ["{short_tmp / "bundles"}"]\n')
    attackers: list[subprocess.Popen[str]] = []
    try:
        d.register("root-agent", "unix:uid:0")
        d.register("nobody-signed", f"unix:uid:{NOBODY}", "sigstore:verified:true")
        client = short_tmp / "client.py"
        client.write_text(CLIENT)
        client.chmod(0o644)
        evil = short_tmp / "evil"
        evil.mkdir()
        os.chown(evil, NOBODY, NOBODY)
        for i in range(FIFO_CALLERS):
            _python_copy(evil / f"agent{i}")
            os.mkfifo(evil / f"agent{i}.sigstore.json")  # the bundle beside it: a FIFO
        for i in range(HUGE_CALLERS):
            _python_copy(evil / f"huge{i}", size=64 << 30)
        for p in evil.iterdir():
            os.chown(p, NOBODY, NOBODY)
        for i in range(FIFO_CALLERS):
            attackers.append(_start(evil / f"agent{i}", client, d, NOBODY))
        for i in range(HUGE_CALLERS):
            attackers.append(_start(evil / f"huge{i}", client, d, NOBODY))
        for a in attackers:  # every attacker's request is on its way
            assert a.stdout is not None
            assert a.stdout.readline().strip() == "SENT"  # the rest: read from a.stdout
        # Give the attackers' attestations a moment to occupy whatever they can (they are
        # answered at once here; before the fix they held every thread for good).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(a.poll() is None for a in attackers):
            time.sleep(0.05)
        # Another caller, with an executable never hashed before, gets its identity.
        other = _python_copy(short_tmp / "other-agent")
        answer = _start(other, client, d, 0).communicate(timeout=90)[0]
        assert _outcome(answer).startswith("ISSUED"), answer
        outcomes = []
        for a in attackers:
            assert a.stdout is not None
            outcomes.append(_outcome(a.stdout.read()))
            a.wait(timeout=90)
        assert all(o.startswith("REFUSED PERMISSION_DENIED") for o in outcomes), outcomes
        records = json.loads(d.cli("audit", "list", "--type", "attestation", "-o", "json").stdout)
        errors = {r["process"]["pid"]: r["details"]["evidence"].get("sigstore.error", "")
                  for r in records}
        for a, o in zip(attackers, outcomes, strict=True):
            pid = int(o.split()[-1])
            huge = Path(a.args[0]).name.startswith("huge")
            expected = "over the limit" if huge else "not a regular file"
            assert expected in errors[pid], (a.args[0], errors[pid])
    finally:
        for a in attackers:
            if a.poll() is None:
                a.kill()
                a.wait()
        if d.alive():
            d.stop()


def test_one_uids_blocked_work_leaves_room_for_other_uids() -> None:
    """The helper every attestor runs its file work on: uid 65534's jobs are all stuck (a
    file that never answers), yet uid 1000's job runs at once, and a stuck job's slot is not
    given away when its caller gives up."""
    stuck = threading.Event()

    async def scenario() -> tuple[str, int, int]:
        bound = Bounded("t", total=3, per_uid=2)
        blocked = [asyncio.ensure_future(bound.run(NOBODY, stuck.wait)) for _ in range(5)]
        while bound.busy < 2:
            await asyncio.sleep(0.01)
        other = await bound.run(1000, lambda: "done")  # would wait forever if starved
        busy_before = bound.busy
        for b in blocked:  # the callers give up; their threads still run
            b.cancel()
        await asyncio.gather(*blocked, return_exceptions=True)
        busy_after_cancel = bound.busy
        stuck.set()
        while bound.busy:
            await asyncio.sleep(0.01)
        bound.close()
        return other, busy_before, busy_after_cancel

    try:
        other, before, after = asyncio.run(scenario())
    finally:
        stuck.set()
    assert other == "done"
    assert before == 2  # uid 65534 held its 2 slots; its 3 other jobs never started
    assert after == 2  # cancelled callers do not free a slot whose thread still runs
