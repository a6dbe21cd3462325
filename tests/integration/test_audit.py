"""The audit trail: complete, durable before release, tamper-evident, fail-closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import jwt as pyjwt
import pytest

from ensign.daemon.audit.event import AuditEvent, record_hash
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.audit.query import read_records
from ensign.daemon.audit.verify import verify
from ensign.daemon.config import AuditConfig
from ensign.daemon.errors import AuditRecordRejected, AuditUnavailable
from ensign.daemon.issuing import split_der
from ensign.daemon.text import unescape
from ensign.proto import workload_pb2 as pb
from tests.support.clients import channel, fetch_jwt, status_of, stream, unary
from tests.support.daemon import Daemon, kill_and_restart, make_daemon
from tests.support.ocsf import problems as ocsf_problems
from tests.support.scripts import JTI_HAMMER


def _records(d: Daemon, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(d.cli("audit", "list", "-o", "json", *args).stdout))


def test_every_credential_a_client_received_is_in_the_trail(daemon: Daemon) -> None:
    me = daemon.register("auditee", "unix:uid:0", extra=("--owner", "alice@example.org"))
    sock = str(daemon.socket)
    jtis = set()
    for aud in ("a", "b", "c", "a"):
        token = fetch_jwt(sock, aud).svids[0].svid
        jtis.add((pyjwt.decode(token, options={"verify_signature": False})["jti"], aud))
    with channel(sock) as ch:
        first = pb.X509SVIDResponse.FromString(next(stream(ch, "FetchX509SVID", timeout=10)))
    from cryptography import x509

    serial = format(x509.load_der_x509_certificate(
        split_der(first.svids[0].x509_svid)[0]).serial_number, "x")
    code, _ = status_of(fetch_jwt, sock, "a", spiffe_id="spiffe://example.org/not/mine")
    assert code == grpc.StatusCode.PERMISSION_DENIED

    trail = daemon.audit("--agent", str(me["id"]))
    issued = [r for r in trail if r["type"] == "svid.issued"]
    got_jtis = {(r["details"]["jti"], r["audience"][0]) for r in issued
                if r["details"]["kind"] == "jwt"}
    assert jtis <= got_jtis
    assert serial in {r["details"].get("serial") for r in issued}
    for r in issued:
        assert r["entry_id"] == me["id"] and r["spiffe_id"] == me["spiffe_id"]
        assert r["process"]["uid"] == 0 and r["process"]["pid"] > 0
    # The agent's trail holds only its own actions; the admin's registration is a registry
    # event with the human (uid 0) as actor, found by subject.
    assert all(r.get("agent_id") == me["id"] for r in trail)
    admin = daemon.audit("--subject", str(me["id"]))
    assert [(r["type"], r["actor"], r["details"]["action"]) for r in admin] == [
        ("registry.change", "uid:0", "register")]
    denials = daemon.audit("--type", "request.denied")
    assert len(denials) == 1 and "not/mine" in denials[0]["reason"], denials
    assert denials[0]["details"]["method"] == "FetchJWTSVID"



def test_ocsf_export_passes_the_schema_and_keeps_who_acted(daemon: Daemon) -> None:
    # What a schema-checking SIEM pipeline receives from `ensign audit export --format ocsf`.
    me = daemon.register("exported", "unix:uid:0", extra=("--owner", "alice@example.org"))
    sock = str(daemon.socket)
    token = fetch_jwt(sock, "ledger").svids[0].svid
    with channel(sock) as ch:
        next(stream(ch, "FetchX509SVID", timeout=10))
    assert status_of(fetch_jwt, sock, "a", spiffe_id="spiffe://example.org/x")[0] == \
        grpc.StatusCode.PERMISSION_DENIED
    validate = pb.ValidateJWTSVIDRequest(audience="payments", svid=token)
    assert status_of(unary, sock, "ValidateJWTSVID", validate.SerializeToString())[0] == \
        grpc.StatusCode.INVALID_ARGUMENT  # a finding: token-misdirected
    daemon.cli("role", "create", "reader", "--audience", "ledger")
    daemon.cli("agent", "suspend", str(me["id"]), "--reason", "check")
    daemon.cli("agent", "resume", str(me["id"]))
    out = daemon.cli("audit", "export", "--format", "ocsf").stdout
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["metadata"]["sequence"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        assert ocsf_problems(e) == [], (e["metadata"]["event_code"], ocsf_problems(e))
    assert {e["class_uid"] for e in events} == {2004, 3002, 3004, 6002}
    by_code = {(e["metadata"]["event_code"], e["activity_id"]) for e in events}
    assert {("registry.change", 12), ("registry.change", 13), ("role.change", 1),
            ("daemon.start", 3), ("svid.issued", 1), ("svid.validated", 1),
            ("anomaly", 1), ("request.denied", 1), ("attestation", 99)} <= by_code
    issued = [e for e in events if e["metadata"]["event_code"] == "svid.issued"]
    assert {e["user"]["name"] for e in issued} == {me["spiffe_id"]}
    assert {e["actor"]["process"]["user"]["uid"] for e in issued} == {"0"}
    suspend = next(e for e in events if e["activity_id"] == 12)
    assert suspend["actor"]["user"]["uid"] == "0" and suspend["entity"]["uid"] == me["id"]
    # unmapped is the record itself: its hash and chain link verify
    for e in events:
        unmapped = e["unmapped"]
        assert record_hash(unmapped) == unmapped["hash"]
    assert [e["unmapped"]["prev"] for e in events[1:]] == [e["unmapped"]["hash"]
                                                           for e in events[:-1]]

def test_kill_minus_9_never_loses_a_released_credential(short_tmp: Path) -> None:
    # Short JWT TTL: tokens are re-minted often, so many distinct jti cross the crashes.
    d = make_daemon(short_tmp, '[svid]\njwt_ttl = "2s"\n[audit]\ncheckpoint_every = 50\n')
    d.register("crashy", "unix:uid:0")
    outs = [short_tmp / f"client{i}.txt" for i in range(8)]
    clients = [subprocess.Popen([sys.executable, "-c", JTI_HAMMER, str(d.socket), str(o)])
               for o in outs]
    rng = random.Random(7)
    try:
        kill_and_restart(d, 20, rng, 0.15, 0.45)
        time.sleep(0.5)
    finally:
        for c in clients:
            c.kill()
            c.wait()
    assert d.stop() == 0
    received = {line.strip() for o in outs for line in o.read_text().splitlines() if line.strip()}
    assert len(received) >= 10, "the clients got too few tokens to prove anything"
    result = d.cli("audit", "verify", "--data-dir", str(d.data_dir))
    assert result.stdout.startswith("audit ok"), result.stdout
    recorded = {r["details"]["jti"] for r in read_records(d.data_dir / "audit")
                if r["type"] == "svid.issued" and r["details"]["kind"] == "jwt"}
    missing = received - recorded
    assert not missing, f"{len(missing)} released tokens have no audit record"


@pytest.fixture(scope="module")
def stopped_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit directory from a real run, with checkpoints every 5 records, daemon stopped."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    d = make_daemon(root, "[audit]\ncheckpoint_every = 5\n")
    d.register("logger", "unix:uid:0")
    for i in range(12):
        fetch_jwt(str(d.socket), f"aud{i}")
    assert d.stop() == 0
    out = tmp_path_factory.mktemp("log")
    shutil.copytree(d.data_dir / "audit", out / "audit")
    shutil.rmtree(root, ignore_errors=True)
    assert verify(out / "audit").ok
    return out / "audit"


def _tampered(src: Path, dst: Path, edit: Any) -> Path:
    shutil.copytree(src, dst)
    seg = dst / "segment-00000001.jsonl"
    lines = seg.read_bytes().splitlines(keepends=True)
    seg.write_bytes(edit(lines))
    return dst


def _flip(lines: list[bytes]) -> bytes:
    line = bytearray(lines[6])
    i = line.index(b'"result":"success"') + len(b'"result":"')
    line[i] = ord("S")
    return b"".join([*lines[:6], bytes(line), *lines[7:]])


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (_flip, "line 7 (seq 7): content does not match its hash"),
        (lambda ls: b"".join(ls[:5] + ls[6:]), "seq 7 where 6 was expected (record 6 is missing"),
        (lambda ls: b"".join([*ls[:5], ls[6], ls[5], *ls[7:]]), "seq 7 where 6 was expected"),
        (lambda ls: b"".join(ls)[: len(b"".join(ls)) // 2], "truncated"),
        (lambda ls: b"".join(ls[:-6]), "truncated: checkpoint at seq"),
    ],
    ids=["flip-byte", "delete-line", "swap-lines", "truncate-mid-record", "truncate-lines"],
)
def test_tampering_is_named(stopped_log: Path, tmp_path: Path, edit: Any, expect: str) -> None:
    bad = _tampered(stopped_log, tmp_path / "audit", edit)
    report = verify(bad)
    assert report.ok is False
    assert expect in report.problems[0], report.problems  # the first problem names the edit
    cli = subprocess.run([sys.executable, "-m", "ensign.daemon", "audit", "verify",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert cli.returncode == 65
    assert len(cli.stderr.strip().splitlines()) == 1 and "audit verification failed" in cli.stderr


def test_checkpoint_forgery_is_caught(stopped_log: Path, tmp_path: Path) -> None:
    dst = tmp_path / "audit"
    shutil.copytree(stopped_log, dst)
    cps = (dst / "checkpoints.jsonl").read_text().splitlines()
    doc = json.loads(cps[0])
    doc["hash"] = "0" * 64
    cps[0] = json.dumps(doc)
    (dst / "checkpoints.jsonl").write_text("\n".join(cps) + "\n")
    report = verify(dst)
    assert not report.ok and "signature does not verify" in report.problems[0]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True).returncode == 0


def test_full_or_read_only_audit_disk_stops_issuing_until_it_recovers(short_tmp: Path) -> None:
    audit_dir = short_tmp / "data" / "audit"
    (short_tmp / "data").mkdir(mode=0o700)
    if os.geteuid() != 0 or not _mount_tmpfs(audit_dir, "256k"):
        pytest.skip("needs root and tmpfs mounts")
    d = None
    try:
        d = make_daemon(short_tmp)
        d.register("disk", "unix:uid:0")
        sock = str(d.socket)
        assert len(fetch_jwt(sock, "ok").svids) == 1
        filler = audit_dir / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=1000"],
                       capture_output=True)
        # The segment's last page may still have room: fetch until a write needs a new page.
        for i in range(40):
            try:
                fetch_jwt(sock, f"full{i}")
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
                break
        else:
            raise AssertionError("the daemon kept issuing on a full audit disk")
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "No space left on device" in details
        health = d.cli("healthcheck", check=False)
        assert health.returncode == 1 and "No space left" in health.stdout
        filler.unlink()
        assert len(fetch_jwt(sock, "recovered").svids) == 1
        assert d.cli("healthcheck").stdout.strip() == "healthy"
        d.stop()
        assert d.cli("audit", "verify", "--data-dir", str(d.data_dir)).returncode == 0
    finally:
        if d is not None and d.alive():
            d.stop()
        subprocess.run(["umount", "-l", str(audit_dir)], capture_output=True)


def test_read_only_audit_disk_at_start_serves_health_and_recovers(short_tmp: Path) -> None:
    audit_dir = short_tmp / "data" / "audit"
    (short_tmp / "data").mkdir(mode=0o700)
    if os.geteuid() != 0 or not _mount_tmpfs(audit_dir, "1m"):
        pytest.skip("needs root and tmpfs mounts")
    d = None
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(audit_dir)], check=True)
        d = make_daemon(short_tmp)
        d.register("ro", "unix:uid:0")
        code, details = status_of(fetch_jwt, str(d.socket), "ro")
        assert code == grpc.StatusCode.UNAVAILABLE and "Read-only file system" in details
        health = d.cli("healthcheck", check=False)
        assert health.returncode == 1 and "Read-only" in health.stdout
        subprocess.run(["mount", "-o", "remount,rw", str(audit_dir)], check=True)
        assert len(fetch_jwt(str(d.socket), "rw-again").svids) == 1
        assert d.cli("healthcheck").stdout.strip() == "healthy"
        d.stop()
        assert d.cli("audit", "verify", "--data-dir", str(d.data_dir)).returncode == 0
    finally:
        if d is not None and d.alive():
            d.stop()
        subprocess.run(["umount", "-l", str(audit_dir)], capture_output=True)


def test_segments_rotate_and_archived_segments_still_verify(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, '[audit]\nsegment_size = "4KiB"\n')
    d.register("rotator", "unix:uid:0")
    for i in range(40):
        fetch_jwt(str(d.socket), f"r{i}")
    d.stop()
    audit_dir = d.data_dir / "audit"
    segs = sorted(audit_dir.glob("segment-*.jsonl"))
    assert len(segs) >= 3
    archive = short_tmp / "archive"
    out = d.cli("audit", "archive", "--data-dir", str(d.data_dir), "--to", str(archive),
                "--keep", str(len(segs) - 2))
    assert out.stdout.startswith("archived 2 segment(s)")
    live = verify(audit_dir)
    assert live.ok, live.problems
    assert any("archived" in n for n in live.notes)
    old = verify(archive)
    assert old.ok, old.problems


# -- one record that cannot be encoded costs nobody else (issue 15 item 2) -------------------

POISON = "/tmp/poison\udcff/sleep"  # what os.readlink gives for the bytes b"poison\xff"


def _event(n: int, text: str = "") -> AuditEvent:
    return AuditEvent(type="attestation", reason=f"r{n}",
                      details={"evidence": {"unix.exe_path": text or f"/bin/ok{n}"}})


async def _batch_with_poison(data: Path) -> dict[str, Any]:
    log = AuditLog(AuditConfig(), data)
    log.open()
    # All of these join one batch: nothing awaits until every one is in.
    good1 = log.durable([_event(1)])
    log.record_nowait(_event(2, POISON))
    bad = log.durable([_event(3, POISON)])
    good2 = log.durable([_event(4), _event(5)])
    mixed = log.durable([_event(6), _event(7, POISON)])  # one bad record refuses the pair
    log.record_nowait(_event(8))
    outcome: dict[str, Any] = {}
    for name, fut in (("good1", good1), ("bad", bad), ("good2", good2), ("mixed", mixed)):
        try:  # a generous bound only so a hang fails the test instead of stalling the suite
            outcome[name] = await asyncio.wait_for(fut, 30)
        except Exception as e:
            outcome[name] = e
    outcome["after"] = await asyncio.wait_for(log.record(_event(9)), 30)
    await log.close()
    return outcome


def test_a_record_that_cannot_be_encoded_fails_only_its_own_waiter(tmp_path: Path) -> None:
    outcome = asyncio.run(_batch_with_poison(tmp_path))
    assert isinstance(outcome["bad"], AuditRecordRejected)
    assert isinstance(outcome["mixed"], AuditRecordRejected)
    assert "cannot be encoded" in str(outcome["bad"])
    records = list(read_records(tmp_path / "audit"))
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    reasons = [r.get("reason") for r in records if r["type"] == "attestation"]
    # The good waiters' records and both records nobody waited for are there, in order; the
    # refused waiters' records (r3, r6 and r7) are not.
    assert reasons == ["r1", "r2", "r4", "r5", "r8", "r9"]
    by_reason = {r.get("reason"): r for r in records}
    assert outcome["good1"] == by_reason["r1"]["seq"]
    assert outcome["good2"] == by_reason["r5"]["seq"]
    assert outcome["after"] == by_reason["r9"]["seq"]
    escaped = by_reason["r2"]["details"]
    assert escaped["evidence"]["unix.exe_path"] == "/tmp/poison\\xff/sleep"
    assert escaped["text_escaped"] is True
    assert unescape(escaped["evidence"]["unix.exe_path"]) == POISON
    report = verify(tmp_path / "audit")
    assert report.ok, report.problems


async def _write_fails_then_recovers(data: Path, filler: Path) -> tuple[Any, int]:
    log = AuditLog(AuditConfig(), data)
    log.open()
    await log.record(_event(0))
    with contextlib.suppress(OSError), filler.open("wb") as f:  # fill the tmpfs
        while f.write(b"\0" * 65536):
            pass
    log.record_nowait(_event(1))
    try:  # more than the segment's last page holds: this batch cannot be written
        refused: Any = await asyncio.wait_for(log.record(_event(2, "x" * 8192)), 30)
    except AuditUnavailable as e:
        refused = e
    log.record_nowait(_event(3))
    filler.unlink()
    last = await asyncio.wait_for(log.record(_event(4)), 30)
    await log.close()
    return refused, last


def test_a_failed_write_loses_no_record_nobody_waited_for(short_tmp: Path) -> None:
    audit_dir = short_tmp / "data" / "audit"
    (short_tmp / "data").mkdir(mode=0o700)
    if os.geteuid() != 0 or not _mount_tmpfs(audit_dir, "1m"):
        pytest.skip("needs root and tmpfs mounts")
    try:
        refused, last = asyncio.run(
            _write_fails_then_recovers(short_tmp / "data", audit_dir / "filler"))
        assert isinstance(refused, AuditUnavailable)
        records = list(read_records(audit_dir))
        reasons = [r.get("reason") for r in records if r["type"] == "attestation"]
        # r2's waiter was told it failed (nothing was released): it is not written. r1 and
        # r3 were accepted with nobody waiting: kept and written once the disk had room.
        assert reasons == ["r0", "r1", "r3", "r4"]
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        assert last == next(r["seq"] for r in records if r.get("reason") == "r4")
        assert verify(audit_dir).ok
    finally:
        subprocess.run(["umount", "-l", str(audit_dir)], capture_output=True)
