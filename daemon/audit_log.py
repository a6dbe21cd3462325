"""The audit log: append-only JSON-lines segments, hash-chained, with signed checkpoints.

Records are written by one writer task with group commit: every record queued while the
previous batch was being fsynced goes out in the next write and shares its fsync. `record()`
returns only once its record is on disk, so callers release a credential after that and never
before. If the log cannot be written, `record()` raises AuditUnavailable and the daemon stops
issuing (fail closed) until a write succeeds again.

Layout under `data_dir/audit/`: `segment-00000001.jsonl ...`, `checkpoints.jsonl`, and
`audit-key.pub.pem`; the signing key lives apart from the CA's, in `data_dir/audit-key/` (0600).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import keys
from .audit_event import GENESIS, AuditEvent, canonical, seal
from .config import AuditConfig
from .errors import AuditUnavailable
from .files import ensure_private_dir, write_private

log = logging.getLogger(__name__)

SEGMENT = re.compile(r"^segment-(\d{8})\.jsonl$")
CHECKPOINTS = "checkpoints.jsonl"
PUBLIC_KEY = "audit-key.pub.pem"


def segment_name(n: int) -> str:
    return f"segment-{n:08d}.jsonl"


def segments(audit_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in audit_dir.iterdir() if audit_dir.exists() else []:
        m = SEGMENT.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def chain_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:32]


def sign_checkpoint(key: ec.EllipticCurvePrivateKey, body: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(canonical(body), ec.ECDSA(hashes.SHA256()))).decode()


def _complete_lines(data: bytes) -> tuple[bytes, int]:
    """The prefix of `data` made of whole, parseable JSON lines, and how many bytes follow it."""
    good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except ValueError:
            break
        good += len(line)
    return data[:good], len(data) - good


class AuditLog:
    def __init__(self, config: AuditConfig, data_dir: Path,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._cfg = config
        self.dir = data_dir / "audit"
        self._key_dir = data_dir / "audit-key"
        self._clock = clock
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._public_pem = b""
        self.chain = ""
        self._fd = -1
        self._segment = 0
        self._size = 0
        self._seq = 0
        self._head = GENESIS
        self._cp_seq = 0
        self._cp_time = 0.0
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.problem: str | None = None
        self.on_health_change: Callable[[], None] = lambda: None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Load the key and find the chain's head. An unwritable log does not stop the daemon:
        it serves health and refuses to issue until the log can be written."""
        self._load_key()
        try:
            self._prepare_sync()
        except OSError as e:
            self._set_problem(f"audit log not writable: {e.strerror or e}")
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _prepare_sync(self) -> None:
        ensure_private_dir(self.dir)
        pub_path = self.dir / PUBLIC_KEY
        if not pub_path.exists() or pub_path.read_bytes() != self._public_pem:
            write_private(pub_path, self._public_pem)
        discarded = self._recover_tail()
        self._open_segment(self._segment)
        if discarded:
            self.record_nowait(AuditEvent(
                type="audit.recovered", result="failure",
                reason=f"set aside {discarded} bytes of an incomplete record left by a crash",
            ))

    async def close(self) -> None:
        if self._writer is None:
            return
        with contextlib.suppress(AuditUnavailable):
            await self.record(AuditEvent(type="daemon.stop"))
            await asyncio.to_thread(self._checkpoint_sync)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def seq(self) -> int:
        return self._seq

    # -- appending -------------------------------------------------------------------------

    async def record(self, event: AuditEvent) -> int:
        """Append and wait until the record is durable; return its sequence number."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((event.body(), future))
        self._wake.set()
        return await future

    def record_nowait(self, event: AuditEvent) -> None:
        """Append without waiting (for records that release nothing); failures are logged."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        self._pending.append((event.body(), future))
        self._wake.set()

    async def _write_loop(self) -> None:
        interval = self._cfg.checkpoint_interval.total_seconds()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._write_batch(batch)
            await self._maybe_checkpoint()

    async def _write_batch(self, batch: list[tuple[dict[str, Any], asyncio.Future[int]]]) -> None:
        seq, head, now = self._seq, self._head, self._clock()
        lines = []
        for body, _ in batch:
            seq += 1
            record = seal(body, seq=seq, prev=head, chain=self.chain, at=now)
            head = record["hash"]
            lines.append(canonical(record) + b"\n")
        try:
            await asyncio.to_thread(self._append_sync, b"".join(lines))
        except OSError as e:
            self._set_problem(f"audit log not writable: {e.strerror or e}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(AuditUnavailable(self.problem or "audit log failed"))
            return
        first = self._seq + 1
        self._seq, self._head = seq, head
        self._set_problem(None)
        for i, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result(first + i)

    def _append_sync(self, data: bytes) -> None:
        if self._fd < 0:
            self._prepare_sync()  # also sets aside what a failed write left behind
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            # Take back a partial write so the segment still ends on a whole record.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                os.close(self._fd)
                self._fd = -1  # reopened (and its tail recovered) on the next attempt
            raise
        self._size += len(data)

    # -- checkpoints and rotation ----------------------------------------------------------

    async def _maybe_checkpoint(self) -> None:
        if self._seq == self._cp_seq:
            return
        due_by_count = self._seq - self._cp_seq >= self._cfg.checkpoint_every
        due_by_time = (self._clock().timestamp() - self._cp_time
                       >= self._cfg.checkpoint_interval.total_seconds())
        rotate = self._size >= self._cfg.segment_size
        if due_by_count or due_by_time or rotate:
            try:
                await asyncio.to_thread(self._checkpoint_sync)
                if rotate:
                    await asyncio.to_thread(self._rotate_sync)
            except OSError as e:
                self._set_problem(f"audit checkpoint not writable: {e.strerror or e}")

    def _checkpoint_sync(self) -> None:
        if self._seq == self._cp_seq or self._key is None:
            return
        now = self._clock()
        body = {"seq": self._seq, "hash": self._head, "chain": self.chain,
                "segment": segment_name(self._segment),
                "time": now.isoformat(timespec="microseconds")}
        line = canonical({**body, "sig": sign_checkpoint(self._key, body)}) + b"\n"
        fd = os.open(self.dir / CHECKPOINTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._cp_seq, self._cp_time = self._seq, now.timestamp()

    def _rotate_sync(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self._segment += 1
        self._open_segment(self._segment)

    # -- startup ---------------------------------------------------------------------------

    def _load_key(self) -> None:
        ensure_private_dir(self._key_dir)
        path = self._key_dir / "key.pem"
        if path.exists():
            key = keys.from_pem(path.read_bytes())
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise AuditUnavailable(f"{path}: the audit key must be an EC key")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(path, keys.to_pem(key))
        self._key = key
        self.chain = chain_id(key.public_key())
        self._public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def _recover_tail(self) -> int:
        """Find the head of the chain; set aside an incomplete last record. Returns bytes cut."""
        found = segments(self.dir)
        if not found:
            self._segment = 1
            return 0
        self._segment, last = found[-1]
        data = last.read_bytes()
        good, cut = _complete_lines(data)
        if cut:
            (self.dir / f"{last.name}.incomplete-{len(good)}").write_bytes(data[len(good):])
            with open(last, "r+b") as f:
                f.truncate(len(good))
                f.flush()
                os.fsync(f.fileno())
        lines = good.splitlines()
        if lines:
            tail = json.loads(lines[-1])
            self._seq, self._head = int(tail["seq"]), str(tail["hash"])
        else:
            self._seq, self._head = self._head_before(found[:-1])
        cp = self.dir / CHECKPOINTS
        if cp.exists():
            cps = [json.loads(x) for x in cp.read_bytes().splitlines() if x.strip()]
            if cps:
                self._cp_seq = int(cps[-1]["seq"])
        return cut

    def _head_before(self, earlier: list[tuple[int, Path]]) -> tuple[int, str]:
        for _, path in reversed(earlier):
            lines = path.read_bytes().splitlines()
            if lines:
                tail = json.loads(lines[-1])
                return int(tail["seq"]), str(tail["hash"])
        return 0, GENESIS

    def _open_segment(self, n: int) -> None:
        path = self.dir / segment_name(n)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            self.problem = problem
            if problem:
                log.error("audit log failing: not issuing", extra={"reason": problem})
            else:
                log.info("audit log writable again")
            self.on_health_change()
