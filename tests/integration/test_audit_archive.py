"""Audit retention: `audit verify --from-checkpoint` on a live log, `audit archive` through the
admin socket (an archive that verifies on its own, a live log that verifies from where it ends)
and offline with the daemon stopped."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.support.clients import fetch_jwt
from tests.support.daemon import Daemon, make_daemon


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
