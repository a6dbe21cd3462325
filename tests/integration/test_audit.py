"""The audit trail: complete, durable before release, tamper-evident, fail-closed."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import jwt as pyjwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ensign.daemon.audit.event import (
    Sealer,
    canonical,
    record_hash,
    record_time,
    seal,
    seal_line,
)
from ensign.daemon.audit.query import read_records
from ensign.daemon.audit.verify import verify
from ensign.daemon.issuing import split_der
from ensign.proto import workload_pb2 as pb
from tests.support.clients import channel, fetch_jwt, status_of, stream
from tests.support.daemon import Daemon, make_daemon


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

    trail = _records(daemon, "--agent", str(me["id"]))
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
    admin = _records(daemon, "--subject", str(me["id"]))
    assert [(r["type"], r["actor"], r["details"]["action"]) for r in admin] == [
        ("registry.change", "uid:0", "register")]
    denials = _records(daemon, "--type", "request.denied")
    assert any("not/mine" in r["reason"] for r in denials)


_CLIENT = """
import sys, time, grpc, jwt
from ensign.proto import workload_pb2 as pb
sock, out = sys.argv[1], sys.argv[2]
req = pb.JWTSVIDRequest(audience=["crash"]).SerializeToString()
with open(out, "a") as f:
    while True:
        try:
            with grpc.insecure_channel("unix:" + sock) as ch:
                call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
                while True:
                    raw = call(req, metadata=[("workload.spiffe.io", "true")], timeout=5)
                    token = pb.JWTSVIDResponse.FromString(raw).svids[0].svid
                    f.write(jwt.decode(token, options={"verify_signature": False})["jti"] + "\\n")
                    f.flush()
        except grpc.RpcError:
            time.sleep(0.02)
"""


def test_kill_minus_9_never_loses_a_released_credential(short_tmp: Path) -> None:
    # Short JWT TTL: tokens are re-minted often, so many distinct jti cross the crashes.
    d = make_daemon(short_tmp, '[svid]\njwt_ttl = "2s"\n[audit]\ncheckpoint_every = 50\n')
    d.register("crashy", "unix:uid:0")
    outs = [short_tmp / f"client{i}.txt" for i in range(8)]
    clients = [subprocess.Popen([sys.executable, "-c", _CLIENT, str(d.socket), str(o)])
               for o in outs]
    rng = random.Random(7)
    try:
        for _ in range(20):
            time.sleep(rng.uniform(0.15, 0.45))
            assert d.proc is not None
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(timeout=10)
            d.start()
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
    assert not report.ok
    assert any(expect in p for p in report.problems), report.problems
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
        assert fetch_jwt(sock, "ok").svids
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
        assert fetch_jwt(sock, "recovered").svids
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
        assert fetch_jwt(str(d.socket), "rw-again").svids
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


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(body=st.dictionaries(_TEXT, _VALUE, max_size=8),
       prev=st.sampled_from(["ab" * 32, "0" * 64, 'x"\\y\n']))
def test_seal_line_is_the_canonical_sealed_record(body: dict[str, Any], prev: str) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    line, digest = seal_line(body, seq=7, prev=prev, chain="cd" * 16, at=at)
    record = seal(body, seq=7, prev=prev, chain="cd" * 16, at=at)
    assert line == canonical(record) + b"\n"
    assert digest == record["hash"] == record_hash(json.loads(line))
    sealer = Sealer(body, "cd" * 16)
    assert sealer.seal(seq=7, prev=prev, at=at) == (line, digest)
    assert sealer.seal(seq=8, prev=digest, at=at, stamp=record_time(at)) == seal_line(
        body, seq=8, prev=digest, chain="cd" * 16, at=at)
    assert canonical(body) == json.dumps(body, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=False).encode()


def test_a_body_holding_the_sealer_hole_is_still_sealed_canonically() -> None:
    from ensign.daemon.audit.event import _HOLE

    body = {"reason": f"{_HOLE}s", "type": "anomaly"}
    at = datetime(2026, 1, 2, tzinfo=UTC)
    assert Sealer(body, "c").seal(seq=1, prev="0" * 64, at=at) == seal_line(
        body, seq=1, prev="0" * 64, chain="c", at=at)


def _checkpoint_seqs(audit_dir: Path) -> list[int]:
    return [int(json.loads(line)["seq"])
            for line in (audit_dir / "checkpoints.jsonl").read_text().splitlines()]


def _verify_cli(d: Daemon, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return d.cli("audit", "verify", "--data-dir", str(path), *args, check=False)


def test_from_checkpoint_verifies_a_live_log_and_still_catches_tampering(
        short_tmp: Path) -> None:
    d = make_daemon(short_tmp, "[audit]\ncheckpoint_every = 5\n")
    d.register("counted", "unix:uid:0")
    for i in range(12):
        fetch_jwt(str(d.socket), f"c{i}")
    audit_dir = d.data_dir / "audit"
    middle = _checkpoint_seqs(audit_dir)[1]
    live = _verify_cli(d, d.data_dir, "--from-checkpoint", str(middle))  # daemon running
    assert live.returncode == 0, live.stderr
    assert live.stdout.startswith("audit ok") and f"from checkpoint {middle}" in live.stdout
    d.stop()
    # the same check on a copy with one record after the checkpoint altered
    bad = short_tmp / "bad"
    shutil.copytree(d.data_dir / "audit", bad / "audit")
    seg = bad / "audit" / "segment-00000001.jsonl"
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[middle + 1] = lines[middle + 1].replace(b'"result":"success"', b'"result":"Success"')
    seg.write_bytes(b"".join(lines))
    tampered = _verify_cli(d, bad, "--from-checkpoint", str(middle))
    assert tampered.returncode == 65 and f"seq {middle + 2}" in tampered.stderr


def test_archive_through_the_daemon_as_the_readme_says(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, '[audit]\nsegment_size = "4KiB"\ncheckpoint_every = 5\n')
    d.register("archived", "unix:uid:0")
    for i in range(40):
        fetch_jwt(str(d.socket), f"r{i}")
    live_dir = d.data_dir / "audit"
    segs = sorted(live_dir.glob("segment-*.jsonl"))
    assert len(segs) >= 3
    archive = short_tmp / "archive"
    out = d.cli("audit", "archive", "--to", str(archive))  # admin socket from the environment
    assert out.stdout.startswith(f"archived {len(segs) - 1} segment(s)"), out.stdout
    assert sorted(p.name for p in live_dir.glob("segment-*.jsonl")) == [segs[-1].name]
    # the archive verifies on its own, wherever it is moved
    moved = short_tmp / "elsewhere" / "2026-12"
    shutil.move(archive, moved)
    alone = _verify_cli(d, moved)
    assert alone.returncode == 0 and alone.stdout.startswith("audit ok"), alone.stderr
    ends = json.loads(_verify_cli(d, moved, "-o", "json").stdout)["last_seq"]
    # the live log verifies from where the archive ends, the daemon still writing to it
    fetch_jwt(str(d.socket), "after")
    assert _verify_cli(d, d.data_dir).returncode == 0
    resumed = _verify_cli(d, d.data_dir, "--from-checkpoint", str(ends))
    assert resumed.returncode == 0, resumed.stderr
    archived = json.loads(d.cli("audit", "list", "--type", "audit.archived", "-o", "json").stdout)
    assert [r["actor"] for r in archived] == ["uid:0"]
    assert archived[0]["details"]["segments"] == [p.name for p in segs[:-1]]
    # a second archive into a new directory verifies on its own too
    for i in range(30):
        fetch_jwt(str(d.socket), f"s{i}")
    second = short_tmp / "second"
    d.cli("audit", "archive", "--to", str(second))
    assert _verify_cli(d, second).returncode == 0
    # offline archiving is refused while the daemon holds the data dir
    assert d.proc is not None
    busy = d.cli("audit", "archive", "--to", str(short_tmp / "x"), "--data-dir",
                 str(d.data_dir), check=False)
    assert busy.returncode == 78 and f"pid {d.proc.pid}" in busy.stderr
    assert d.stop() == 0
    assert _verify_cli(d, d.data_dir).returncode == 0


def test_an_archive_into_another_chains_directory_removes_nothing(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, '[audit]\nsegment_size = "4KiB"\n')
    d.register("kept", "unix:uid:0")
    for i in range(30):
        fetch_jwt(str(d.socket), f"k{i}")
    live_dir = d.data_dir / "audit"
    before = sorted(p.name for p in live_dir.glob("segment-*.jsonl"))
    dest = short_tmp / "archive"
    dest.mkdir()
    (dest / "audit-key.pub.pem").write_text("another chain's key\n")
    refused = d.cli("audit", "archive", "--to", str(dest), check=False)
    assert refused.returncode == 64 and "another audit chain" in refused.stderr
    assert sorted(p.name for p in live_dir.glob("segment-*.jsonl")) == before
    d.stop()
    assert _verify_cli(d, d.data_dir).returncode == 0


def test_offline_archive_then_restart_continues_the_chain(short_tmp: Path) -> None:
    d = make_daemon(short_tmp, '[audit]\nsegment_size = "4KiB"\n')
    d.register("restarted", "unix:uid:0")
    for i in range(30):
        fetch_jwt(str(d.socket), f"o{i}")
    d.stop()
    live_dir = d.data_dir / "audit"
    last = sorted(live_dir.glob("segment-*.jsonl"))[-1]
    # as a kill right after a rotation leaves it: a new, empty newest segment
    (live_dir / f"segment-{int(last.name[8:16]) + 1:08d}.jsonl").touch()
    archive = short_tmp / "archive"
    out = d.cli("audit", "archive", "--data-dir", str(d.data_dir), "--to", str(archive))
    assert out.stdout.startswith("archived"), out.stdout
    assert _verify_cli(d, d.data_dir).returncode == 0  # only the empty segment is left
    ends = json.loads(_verify_cli(d, archive, "-o", "json").stdout)["last_seq"]
    d.start()
    fetch_jwt(str(d.socket), "after-restart")
    d.stop()
    report = json.loads(_verify_cli(d, d.data_dir, "-o", "json").stdout)
    assert report["ok"] and report["first_seq"] == ends + 1, report
