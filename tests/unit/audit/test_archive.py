"""Archive steps on a real audit log: only what verifies elsewhere ever leaves the live log."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from ensign.daemon.audit import AuditEvent, AuditLog, check_drop, drop, plan, store_plan, verify
from ensign.daemon.config import AuditConfig
from ensign.daemon.errors import InvalidRequest, UsageError


def _log(data_dir: Path, records: int) -> Path:
    async def write() -> None:
        log = AuditLog(AuditConfig(segment_size=4096, checkpoint_every=5), data_dir)
        log.open()
        for i in range(records):
            await log.record(AuditEvent(type="attestation", reason=f"record {i} " + "x" * 200))
        await log.close()

    asyncio.run(write())
    return data_dir / "audit"


@pytest.fixture
def live(tmp_path: Path) -> Path:
    audit_dir = _log(tmp_path / "data", 60)
    assert len(list(audit_dir.glob("segment-*.jsonl"))) >= 4
    return audit_dir


def _proofs(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_drop_refuses_anything_but_the_verified_oldest_segments(live: Path) -> None:
    segs = sorted(live.glob("segment-*.jsonl"))
    with pytest.raises(InvalidRequest, match="never the newest"):
        check_drop(live, _proofs(segs), "")
    with pytest.raises(InvalidRequest, match="never the newest"):
        check_drop(live, _proofs(segs[1:2]), "")  # a gap would break the live chain
    wrong = {**_proofs(segs[:2]), segs[1].name: "0" * 64}
    with pytest.raises(InvalidRequest, match="differs from the archived copy"):
        check_drop(live, wrong, "")
    assert sorted(live.glob("segment-*.jsonl")) == segs
    assert check_drop(live, _proofs(segs[:2]), "") == segs[:2]


def test_archive_then_drop_leaves_two_logs_that_verify(live: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        plan(live, 0)
    p = plan(live, keep=2)
    dest = tmp_path / "archive"
    written = store_plan(p, dest)
    assert sorted(written) == [s.name for s in p.segments]
    archived = verify(dest)
    assert archived.ok and archived.first_seq == 1, archived.problems
    assert drop(live, written) == sorted(written)
    rest = verify(live)
    assert rest.ok and rest.first_seq == archived.last_seq + 1, rest.problems
    from_there = verify(live, archived.last_seq)
    assert from_there.ok and from_there.records == rest.records, from_there.problems
