"""Audit shipping: this node's hash-chained records and signed checkpoints, copied to the fleet's
database in order, in the background, at least once.

The local log stays the source of truth and nothing on its path changes: the shipper reads the
segment files the writer has made durable (up to `AuditLog.seq`, which moves only after a batch
is on disk), never a record still being written. Inserts are idempotent on (node, seq), so a
batch sent again after a crash or a lost connection changes nothing; each batch and the node's
`audit_shipped` mark are one transaction, and batches go in order, so the highest shipped seq
has every record below it. A checkpoint is shipped once the records it covers are. `issuance()`
reads back, for another node, the attribution of one shipped issuance record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ensign.daemon.audit import CHECKPOINTS, segments

log = logging.getLogger(__name__)

BATCH = 5000  # records per transaction


@dataclass
class Cursor:
    """Where the next record to ship starts in the segment files."""

    segment: int = 0  # 0: not positioned yet
    offset: int = 0
    seq: int = 0  # the last record read (shipped, once the batch commits)


def read_after(audit_dir: Path, cursor: Cursor, upto: int,
               limit: int = BATCH) -> tuple[list[tuple[int, str]], Cursor]:
    """(seq, line) of whole records after the cursor, up to seq `upto`; the new cursor.

    Records are not parsed here: the log is one unbroken sequence (each line's seq is the one
    before plus one, across segments and crashes), so a line's seq is counted. The database
    checks the count against the record (a CHECK constraint) and verify checks the chain."""
    found = segments(audit_dir)
    cur = Cursor(cursor.segment, cursor.offset, cursor.seq)
    if cur.segment == 0:
        cur = _position(found, cursor.seq)
    out: list[tuple[int, str]] = []
    for number, path in found:
        if number < cur.segment:
            continue
        if number > cur.segment:
            cur.segment, cur.offset = number, 0
        with open(path, "rb") as f:
            f.seek(cur.offset)
            for raw in f:
                if not raw.endswith(b"\n") or len(out) >= limit or cur.seq >= upto:
                    return out, cur
                cur.offset += len(raw)
                cur.seq += 1
                out.append((cur.seq, raw[:-1].decode()))
    return out, cur


def _first_seq(path: Path) -> int | None:
    with open(path, "rb") as f:
        first = f.readline()
    return int(json.loads(first)["seq"]) if first.endswith(b"\n") else None


def _position(found: list[tuple[int, Path]], after: int) -> Cursor:
    """The place of record after+1: the last segment starting at or before it, then the line."""
    chosen: tuple[int, Path] | None = None
    for number, path in found:
        first = _first_seq(path)
        if first is None or (first > after + 1 and chosen is not None):
            break
        chosen = (number, path)
        if first > after + 1:  # even the oldest segment starts later
            if after:
                raise GapError(f"local audit records {after + 1}..{first - 1} are not in the "
                               "segment files (archived before they were shipped?)")
            return Cursor(number, 0, first - 1)  # archived before this node joined a fleet
    if chosen is None:
        return Cursor(found[0][0] if found else 1, 0, after)
    number, path = chosen
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n") or int(json.loads(raw)["seq"]) > after:
                break
            offset += len(raw)
    return Cursor(number, offset, after)


class GapError(Exception):
    """The local files no longer hold a record that was never shipped."""


def read_checkpoints(audit_dir: Path, offset: int, after: int,
                     upto: int) -> tuple[list[tuple[int, str]], int]:
    """Checkpoints after seq `after` and at most `upto`, read from byte `offset` on; returns
    them and the offset past the last one taken (the next read starts there)."""
    path = audit_dir / CHECKPOINTS
    out: list[tuple[int, str]] = []
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; a missing file is no checkpoint)
    except FileNotFoundError:
        return out, offset
    with f:
        f.seek(offset)
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            seq = int(json.loads(raw)["seq"])
            if seq > upto:
                break  # shipped once the records it covers are
            offset += len(raw)
            if seq > after:
                out.append((seq, raw[:-1].decode()))
    return out, offset


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def issuance(conn: psycopg.AsyncConnection[Any], node: str,
                   jti: str) -> dict[str, Any] | None:
    """The attribution fields of `node`'s shipped issuance record of `jti` (None: not shipped,
    or none), read through `issuance_attribution()`: a node's role reads no other node's raw
    records."""
    cur = await conn.execute("SELECT issuance_attribution(%s, %s)", (node, jti))
    row = await cur.fetchone()
    found = row[0] if row else None
    return found if isinstance(found, dict) else None


class Shipper:
    """Ships one node's trail; `run()` until cancelled. `shipped`/`problem` are for status."""

    def __init__(self, audit_dir: Path, node: str, durable_seq: Callable[[], int],
                 connection: Callable[[], Any], wake_every: float = 0.2) -> None:
        self._dir = audit_dir
        self._node = node
        self._durable = durable_seq
        self._connection = connection  # async context manager: a node-role connection
        self._every = wake_every
        self.cursor = Cursor()
        self.shipped = 0
        self.shipped_checkpoint = 0
        self.problem: str | None = None
        self._started = False
        self._cp_offset = 0

    async def _resume(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            "SELECT (SELECT coalesce(max(seq), 0) FROM audit_records WHERE node = %s), "
            "(SELECT coalesce(max(seq), 0) FROM audit_checkpoints WHERE node = %s)",
            (self._node, self._node))
        row = await cur.fetchone()
        assert row is not None
        self.shipped, self.shipped_checkpoint = int(row[0]), int(row[1])
        self.cursor = Cursor(seq=self.shipped)
        self._cp_offset = 0  # found again by the first read (it skips what was shipped)
        self._started = True

    async def ship_once(self) -> int:
        """Ship what is durable and not shipped yet; returns how many records went."""
        sent = 0
        if (self._started and self._durable() <= self.shipped
                and _size(self._dir / CHECKPOINTS) == self._cp_offset):
            return 0  # nothing new: no connection taken
        async with self._connection() as conn:
            if not self._started:
                await self._resume(conn)
            while True:
                upto = self._durable()
                if upto <= self.shipped:
                    break
                records, cursor = await asyncio.to_thread(
                    read_after, self._dir, self.cursor, upto)
                if not records:
                    break
                async with conn.transaction():
                    # One statement per batch: the rows go as two arrays in binary (no
                    # escaping), the database parses each record once (its columns are
                    # derived from it).
                    await conn.execute(
                        "INSERT INTO audit_records (node, seq, line, record) "
                        "SELECT %s, s, l, l::jsonb FROM unnest(%b::bigint[], %b::text[]) "
                        "AS t(s, l) ON CONFLICT (node, seq) DO NOTHING",
                        (self._node, [r[0] for r in records], [r[1] for r in records]))
                    await conn.execute(
                        "UPDATE nodes SET audit_shipped = %s, audit_seq = greatest(audit_seq, %s) "
                        "WHERE name = %s", (records[-1][0], upto, self._node))
                self.cursor, self.shipped = cursor, records[-1][0]
                sent += len(records)
            cps, offset = await asyncio.to_thread(
                read_checkpoints, self._dir, self._cp_offset, self.shipped_checkpoint,
                self.shipped)
            if cps:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO audit_checkpoints (node, seq, line) VALUES (%s, %s, %s) "
                        "ON CONFLICT (node, seq) DO NOTHING",
                        [(self._node, seq, line) for seq, line in cps])
                self.shipped_checkpoint = cps[-1][0]
            self._cp_offset = offset
        return sent

    async def run(self) -> None:
        backoff = self._every
        while True:
            try:
                await self.ship_once()
                self.problem, backoff = None, self._every
            except GapError as e:
                self.problem = f"audit shipping stopped: {e}"
                log.error("audit shipping stopped", extra={"reason": str(e)})
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._started = False  # ask the database where it stands when back
                self.problem = f"audit shipping paused: {e}"
                log.debug("audit shipping paused", extra={"reason": str(e)})
                backoff = min(backoff * 2, 5.0)
            await asyncio.sleep(backoff)
