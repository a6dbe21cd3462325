"""The audit log on a temp dir, no daemon: group commit keeps submission order with contiguous
sequence numbers, a torn last record is set aside at open, an unwritable log fails closed, and
checkpoint signatures verify (and a forged one does not)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from ensign.daemon.audit import AuditEvent, AuditLog, read_records, verify
from ensign.daemon.audit.log import DEFER_BATCH, DEFER_LINGER, DEFER_MAX
from ensign.daemon.config import AuditConfig
from ensign.daemon.errors import AuditUnavailable

T = TypeVar("T")


def _run(data: Path, body: Callable[[AuditLog], Awaitable[T]], *,
         defer_linger: float = DEFER_LINGER, **cfg: object) -> T:
    """Open a log on `data`, run `body`, close it (a clean stop writes daemon.stop and a
    checkpoint)."""
    async def main() -> T:
        log = AuditLog(AuditConfig(**cfg), data, defer_linger=defer_linger)
        log.open()
        try:
            return await body(log)
        finally:
            await log.close()
    return asyncio.run(main())


def _event(i: int) -> AuditEvent:
    return AuditEvent(type="svid.issued", reason=f"r{i}", agent_id=f"agt_{i % 3}")


def _records(data: Path) -> list[dict[str, object]]:
    return list(read_records(data / "audit"))


def test_group_commit_keeps_order_and_sequence_numbers_contiguous(tmp_path: Path) -> None:
    async def body(log: AuditLog) -> list[int]:
        # Submitted together: most share a batch (and its sync) with others.
        return await asyncio.gather(*(log.record(_event(i)) for i in range(200)))

    seqs = _run(tmp_path, body)
    assert seqs == list(range(seqs[0], seqs[0] + 200))
    records = _records(tmp_path)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    by_reason = {r.get("reason"): r["seq"] for r in records}
    assert [by_reason[f"r{i}"] for i in range(200)] == seqs  # each caller got its own record
    assert records[-1]["type"] == "daemon.stop"
    report = verify(tmp_path / "audit")
    assert (report.ok, report.records, report.problems) == (True, len(records), [])


def test_durable_batch_resolves_with_its_last_sequence_number(tmp_path: Path) -> None:
    async def body(log: AuditLog) -> tuple[int, int, int]:
        first = await log.record(_event(0))
        last = await log.durable([_event(1), _event(2), _event(3)])
        empty = await log.durable([])
        return first, last, empty

    assert _run(tmp_path, body) == (1, 4, 4)


def test_a_torn_last_record_is_set_aside_and_the_chain_goes_on(tmp_path: Path) -> None:
    async def write(log: AuditLog) -> int:
        return await log.record(_event(0))

    _run(tmp_path, write)
    segment = sorted((tmp_path / "audit").glob("segment-*.jsonl"))[-1]
    whole = segment.read_bytes()
    torn = b'{"seq": 99, "type": "svid.iss'
    segment.write_bytes(whole + torn)  # a crash in the middle of a write

    async def again(log: AuditLog) -> int:
        return await log.record(_event(1))

    seq = _run(tmp_path, again)
    set_aside = list((tmp_path / "audit").glob(f"{segment.name}.incomplete-*"))
    assert [p.read_bytes() for p in set_aside] == [torn]
    assert set_aside[0].name == f"{segment.name}.incomplete-{len(whole)}"
    records = _records(tmp_path)
    recovered = [r for r in records if r["type"] == "audit.recovered"]
    assert len(recovered) == 1 and f"set aside {len(torn)} bytes" in str(recovered[0]["reason"])
    assert seq == records[-2]["seq"]  # then daemon.stop
    report = verify(tmp_path / "audit")
    assert (report.ok, report.problems) == (True, [])


def test_an_unwritable_log_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "audit").write_text("not a directory")  # the log cannot be created

    async def body(log: AuditLog) -> str | None:
        with pytest.raises(AuditUnavailable, match="audit log not writable"):
            await log.record(_event(0))
        with pytest.raises(AuditUnavailable):
            await log.durable([_event(1), _event(2)])
        return log.problem

    problem = _run(tmp_path, body)
    assert problem is not None and problem.startswith("audit log not writable"), problem
    assert (tmp_path / "audit").read_text() == "not a directory"


def test_checkpoints_are_signed_and_verified(tmp_path: Path) -> None:
    async def body(log: AuditLog) -> None:
        for i in range(12):  # one at a time: a checkpoint after every 5 records
            await log.record(_event(i))

    _run(tmp_path, body, checkpoint_every=5)
    audit = tmp_path / "audit"
    report = verify(audit)
    assert (report.ok, report.problems) == (True, [])
    lines = (audit / "checkpoints.jsonl").read_bytes().splitlines()
    assert report.checkpoints == len(lines) >= 3
    last = json.loads(lines[-1])
    assert last["seq"] == report.last_seq  # the clean stop checkpoints the head

    # A checkpoint re-signed by another key, or with its hash edited, is named.
    forged = dict(last, hash="00" * 32)
    (audit / "checkpoints.jsonl").write_bytes(b"\n".join([*lines[:-1], json.dumps(forged)
                                                          .encode()]) + b"\n")
    report = verify(audit)
    assert report.ok is False
    assert report.problems == [f"checkpoint line {len(lines)} (seq {last['seq']}): "
                               "signature does not verify"]
    bad_sig = dict(last, sig=base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode())
    (audit / "checkpoints.jsonl").write_bytes(b"\n".join([*lines[:-1], json.dumps(bad_sig)
                                                          .encode()]) + b"\n")
    assert verify(audit).problems == [f"checkpoint line {len(lines)} (seq {last['seq']}): "
                                      "signature does not verify"]


def test_records_after_the_last_checkpoint_are_noted(tmp_path: Path) -> None:
    async def body(log: AuditLog) -> None:
        await log.record(_event(0))

    _run(tmp_path, body)
    audit = tmp_path / "audit"
    (audit / "checkpoints.jsonl").unlink()
    report = verify(audit)
    assert report.ok is True and report.checkpoints == 0
    assert report.notes == [f"records 1..{report.last_seq} come after the last checkpoint: "
                            "their removal could not be detected"]


def test_observers_see_every_record_and_a_failing_one_loses_nothing(tmp_path: Path) -> None:
    seen: list[str] = []

    def broken(body: dict[str, object]) -> None:
        raise RuntimeError("observer bug")

    async def body(log: AuditLog) -> list[int]:
        log.observers.extend([broken, lambda b: seen.append(str(b.get("reason", "")))])
        return [await log.record(_event(i)) for i in range(3)]

    seqs = _run(tmp_path, body)
    assert seen[:3] == ["r0", "r1", "r2"]
    assert [r["reason"] for r in _records(tmp_path) if r["seq"] in seqs] == ["r0", "r1", "r2"]


async def _until_durable(log: AuditLog, seq: int) -> int:
    deadline = asyncio.get_running_loop().time() + 30
    while log.seq < seq and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return log.seq


def test_deferred_records_ride_with_the_next_write_not_a_sync_of_their_own(
        tmp_path: Path) -> None:
    async def body(log: AuditLog) -> tuple[int, int, int]:
        start = log.seq
        assert log.deferred([_event(1)]) is True
        for _ in range(50):  # many passes of the loop: a prompt record would be written now
            await asyncio.sleep(0)
        held = log.seq
        return start, held, await log.record(_event(2))

    start, held, last = _run(tmp_path, body, defer_linger=3600)
    assert held == start  # no write of its own within the linger
    assert last == start + 2  # it went with the next record, before it
    reasons = [r.get("reason") for r in _records(tmp_path) if r["type"] == "svid.issued"]
    assert reasons == ["r1", "r2"]


def test_deferred_records_go_after_the_linger_or_once_a_batch_of_them_waits(
        tmp_path: Path) -> None:
    async def alone(log: AuditLog) -> tuple[int, int]:
        start = log.seq
        assert log.deferred([_event(1)]) is True
        return start, await _until_durable(log, start + 1)

    start, reached = _run(tmp_path / "a", alone, defer_linger=0.05)
    assert reached == start + 1  # nobody else wrote: the linger sent it on its own

    async def many(log: AuditLog) -> tuple[int, int]:
        start = log.seq
        assert all(log.deferred([_event(i)]) for i in range(DEFER_BATCH))
        return start, await _until_durable(log, start + DEFER_BATCH)

    start, reached = _run(tmp_path / "b", many, defer_linger=3600)
    assert reached == start + DEFER_BATCH  # a full batch does not wait out the linger


def test_deferred_records_are_written_and_bounded_and_refused_while_failing(
        tmp_path: Path) -> None:
    async def body(log: AuditLog) -> tuple[list[bool], int]:
        # All in one pass of the loop: nothing reaches the disk meanwhile, so the window fills.
        taken = [log.deferred([_event(i)]) for i in range(DEFER_MAX + 3)]
        last = await log.record(_event(9999))  # in order: every deferred record is before it
        return taken, last

    taken, last = _run(tmp_path, body)
    assert taken == [True] * DEFER_MAX + [False] * 3  # the caller then waits for durability
    reasons = [r.get("reason") for r in _records(tmp_path) if r["type"] == "svid.issued"]
    assert reasons == [f"r{i}" for i in range(DEFER_MAX)] + ["r9999"]
    assert last == DEFER_MAX + 1

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "audit").write_text("not a directory")

    async def failing(log: AuditLog) -> bool:
        with pytest.raises(AuditUnavailable):
            await log.record(_event(0))
        return log.deferred([_event(1)])

    assert _run(broken, failing) is False  # a failing log never lets a delivery go unheld
