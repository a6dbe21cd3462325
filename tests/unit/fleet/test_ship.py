"""Reading a node's audit log for shipping: from any seq, across segments, never a torn line,
and a gap (segments archived before they were shipped) is named."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from ensign.daemon.audit import CHECKPOINTS, AuditEvent, AuditLog, segments
from ensign.daemon.config import AuditConfig
from ensign.daemon.fleet.ship import Cursor, GapError, read_after, read_checkpoints


def _log(path: Path, records: int, segment_size: int = 4096) -> AuditLog:
    async def write() -> AuditLog:
        log = AuditLog(AuditConfig(checkpoint_every=7, segment_size=segment_size,
                                   checkpoint_interval=timedelta(hours=1)), path)
        log.open()
        for i in range(records):
            await log.record(AuditEvent(type="attestation", reason=f"record {i}"))
        await log.close()
        return log

    return asyncio.run(write())


def _lines(audit_dir: Path) -> list[str]:
    return [ln for _, p in segments(audit_dir) for ln in p.read_text().splitlines()]


def test_reads_every_record_once_in_order_across_segments(tmp_path: Path) -> None:
    log = _log(tmp_path, 60)
    assert len(segments(log.dir)) > 2  # rotated: the reader must cross segments
    everything = _lines(log.dir)
    for start in (0, 1, 17, 40, len(everything) - 1):
        got: list[tuple[int, str]] = []
        cursor = Cursor(seq=start)
        while True:
            batch, cursor = read_after(log.dir, cursor, log.seq, limit=9)
            if not batch:
                break
            got += batch
        assert [seq for seq, _ in got] == list(range(start + 1, log.seq + 1))
        assert [line for _, line in got] == everything[start:]


def test_stops_at_the_durable_seq_and_at_a_torn_line(tmp_path: Path) -> None:
    log = _log(tmp_path, 10, segment_size=1 << 20)
    batch, cursor = read_after(log.dir, Cursor(), upto=4)
    assert [s for s, _ in batch] == [1, 2, 3, 4]
    _, last = segments(log.dir)[-1]
    with open(last, "ab") as f:
        f.write(b'{"seq": 99, "torn')  # a write in progress
    batch, cursor = read_after(log.dir, cursor, upto=10_000)
    assert [s for s, _ in batch] == list(range(5, log.seq + 1))


def test_records_archived_before_they_were_shipped_are_a_named_gap(tmp_path: Path) -> None:
    log = _log(tmp_path, 60)
    _, first = segments(log.dir)[0]
    first.unlink()
    with pytest.raises(GapError, match=r"local audit records 3\.\."):
        read_after(log.dir, Cursor(seq=2), log.seq)
    # a node that never shipped starts at the oldest record it still has
    batch, _ = read_after(log.dir, Cursor(seq=0), log.seq, limit=1)
    assert batch[0][0] > 1


def test_checkpoints_wait_for_the_records_they_cover(tmp_path: Path) -> None:
    log = _log(tmp_path, 30)
    every = [json.loads(x)["seq"] for x in (log.dir / CHECKPOINTS).read_text().splitlines()]
    assert len(every) >= 4
    cut = every[1]
    cps, offset = read_checkpoints(log.dir, 0, after=0, upto=cut)
    assert [seq for seq, _ in cps] == every[:2]
    more, end = read_checkpoints(log.dir, offset, after=cut, upto=log.seq)
    assert [seq for seq, _ in more] == every[2:]
    assert read_checkpoints(log.dir, end, after=log.seq, upto=log.seq) == ([], end)
