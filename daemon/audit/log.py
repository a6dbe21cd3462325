"""The audit log: append-only JSON-lines segments, hash-chained, with signed checkpoints.

Records are written by one long-lived writer thread with group commit: every record queued
while the previous batch was on its way to disk is sealed into the next write and shares its
sync (segments are opened O_DSYNC). `record()` returns only once its record is on disk, so
callers release a credential after that and never before. If the log cannot be written,
`record()` raises AuditUnavailable and the daemon stops issuing (fail closed) until a write
succeeds again.

One caller's record never costs another's: each waiter's records are sealed on their own, so a
record that cannot be encoded (text that is not UTF-8) fails only its own waiter (its request
is refused with AuditRecordRejected) and a record nobody waits for is written with its text
escaped instead. Records nobody waits for that a failed write could not take are kept and
written with the next batch (up to MAX_RETAINED; beyond it, how many were dropped is recorded).

Layout under `data_dir/audit/`: `segment-00000001.jsonl ...`, `checkpoints.jsonl`, and
`audit-key.pub.pem`; the signing key lives apart from the CA's, in `data_dir/audit-key/` (0600).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon import keys
from ensign.daemon.audit.event import (
    GENESIS,
    AuditEvent,
    Sealer,
    Unencodable,
    canonical,
    record_time,
)
from ensign.daemon.config import AuditConfig
from ensign.daemon.errors import AuditRecordRejected, AuditUnavailable
from ensign.daemon.files import ensure_private_dir, write_private
from ensign.daemon.text import escape_tree

log = logging.getLogger(__name__)

SEGMENT = re.compile(r"^segment-(\d{8})\.jsonl$")
CHECKPOINTS = "checkpoints.jsonl"
PUBLIC_KEY = "audit-key.pub.pem"
MAX_LOOKS = 4
MAX_SEALERS = 256
T = TypeVar("T")
MAX_RETAINED = 10_000  # unwritten records nobody waits for, kept across failed writes

# One caller's records, sealed together, and who waits for them (None: nobody).
_Unit = tuple[tuple[Sealer, ...], "asyncio.Future[int] | None"]


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
        # The file and the head of the chain belong to the writer thread while a batch is out;
        # the loop reads the head only between batches.
        self._fd = -1
        self._segment = 0
        self._size = 0
        self._seq = 0
        self._head = GENESIS
        self._cp_seq = 0
        self._cp_due = 0.0  # time.monotonic() when a checkpoint is due however few records
        # Event loop: the next batch, unit by unit, and how many records it holds.
        self._pending: list[_Unit] = []
        self._pending_records = 0
        self._dropped = 0  # records nobody waited for, dropped after MAX_RETAINED
        self._sealers: dict[int, tuple[AuditEvent, Sealer]] = {}  # by id() of the event
        self._busy = False  # a batch is with the writer thread
        self._flush_soon = False
        self._seen = 0  # records in the next batch when _flush last looked
        self._looks = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.problem: str | None = None
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        # Called from the writer thread with the seconds each durable write took (metrics).
        self.write_timer: Callable[[float], None] | None = None
        self.on_health_change: Callable[[], None] = lambda: None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Load the key and find the chain's head. An unwritable log does not stop the daemon:
        it serves health and refuses to issue until the log can be written."""
        self._loop = asyncio.get_running_loop()
        self._load_key()
        try:
            self._note_recovered(self._prepare_sync())
        except OSError as e:
            self._set_problem(f"audit log not writable: {e.strerror or e}")
        # One long-lived thread does every write, checkpoint and rotation, in order.
        self._thread = threading.Thread(target=self._serve, name="audit-writer", daemon=True)
        self._thread.start()
        self._tick()

    def _prepare_sync(self) -> int:
        """Open the current segment; returns how many bytes of a torn record were set aside."""
        ensure_private_dir(self.dir)
        pub_path = self.dir / PUBLIC_KEY
        if not pub_path.exists() or pub_path.read_bytes() != self._public_pem:
            write_private(pub_path, self._public_pem)
        discarded = self._recover_tail()
        self._open_segment(self._segment)
        return discarded

    def _note_recovered(self, discarded: int) -> None:
        if discarded:
            self.record_nowait(AuditEvent(
                type="audit.recovered", result="failure",
                reason=f"set aside {discarded} bytes of an incomplete record left by a crash",
            ))

    async def close(self, failure: str | None = None) -> None:
        """Write what is pending, a `daemon.stop` record (a failure with its reason when the
        daemon could not start) and a checkpoint, then stop the writer thread."""
        if self._thread is None:
            return
        stop = (AuditEvent(type="daemon.stop") if failure is None else
                AuditEvent(type="daemon.stop", result="failure", reason=failure))
        with contextlib.suppress(AuditUnavailable):
            await self.record(stop)
            try:
                await self._in_writer(self._checkpoint_sync)
            except OSError as e:
                log.warning("final audit checkpoint failed", extra={"error": str(e)})
        if self._timer is not None:
            self._timer.cancel()
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def queue_depth(self) -> int:
        """Records accepted but not yet handed to the writer (a metric)."""
        return self._pending_records

    @property
    def seq(self) -> int:
        return self._seq

    # -- appending (event loop) ------------------------------------------------------------

    def durable(self, events: Sequence[AuditEvent]) -> asyncio.Future[int]:
        """Append `events` to one batch; the future resolves once all are on disk.

        Its result is the last record's sequence number; it fails with AuditUnavailable if
        they could not be written, and with AuditRecordRejected (none of them written) if one
        of them cannot be encoded.
        """
        assert self._loop is not None, "open() first"
        future = self._loop.create_future()
        if not events:
            future.set_result(self._seq)
            return future
        try:
            sealers = tuple(self._sealer(e) for e in events)
        except Unencodable as e:
            log.error("audit record cannot be encoded: request refused",
                      extra={"type": events[0].type, "error": str(e)})
            future.set_exception(AuditRecordRejected(f"audit record cannot be encoded: {e}"))
            return future
        self._accept(sealers, future)
        return future

    async def record(self, event: AuditEvent) -> int:
        """Append and wait until the record is durable; return its sequence number."""
        return await self.durable((event,))

    def record_nowait(self, event: AuditEvent) -> None:
        """Append without waiting (for records that release nothing); failures are logged.
        A record that cannot be encoded is written with its text escaped."""
        try:
            sealer = self._sealer(event)
        except Unencodable as e:
            sealer = self._escaped(event.body(), e)
        self._accept((sealer,), None)

    def _escaped(self, body: dict[str, Any], why: Exception) -> Sealer:
        """The record with every string passed through text.escape(), marked as such."""
        log.error("audit record holds text that cannot be encoded: written escaped",
                  extra={"type": body.get("type"), "error": str(why)})
        fixed = escape_tree(body)
        fixed["details"] = {**fixed.get("details", {}), "text_escaped": True}
        return Sealer(fixed, self.chain)

    def _accept(self, sealers: tuple[Sealer, ...], future: asyncio.Future[int] | None) -> None:
        self._pending.append((sealers, future))
        self._pending_records += len(sealers)
        # Observers (metrics, anomaly detection) see every decision as it is recorded; they
        # must be cheap, and one that fails must not stop the record.
        for sealer in sealers:
            for observe in self.observers:
                try:
                    observe(sealer.body)
                except Exception:
                    log.exception("audit observer failed")
        self._schedule_flush()

    def _sealer(self, event: AuditEvent) -> Sealer:
        """Events are immutable once recorded: one recorded again is encoded once."""
        hit = self._sealers.get(id(event))
        if hit is not None and hit[0] is event:  # held here, so its id() is not reused
            return hit[1]
        if not self.chain:  # sealers carry the chain id: none before the key is loaded
            raise RuntimeError("the audit log is not open")
        if len(self._sealers) >= MAX_SEALERS:
            self._sealers.clear()
        sealer = Sealer(event.body(), self.chain)
        self._sealers[id(event)] = (event, sealer)
        return sealer

    def _schedule_flush(self) -> None:
        if not self._busy and not self._flush_soon and self._loop is not None:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Hand the next batch to the writer once a pass of the loop added nothing to it.

        Requests that arrived together are handled in one pass or two: waiting for a quiet
        pass (at most MAX_LOOKS) puts them in one batch, and a batch costs a sync.
        """
        self._flush_soon = False
        if self._busy or not self._pending:
            return
        assert self._loop is not None
        if len(self._pending) != self._seen and self._looks < MAX_LOOKS:
            self._seen, self._looks, self._flush_soon = len(self._pending), self._looks + 1, True
            self._loop.call_soon(self._flush)
            return
        units, at = self._pending, self._clock()
        self._pending, self._pending_records, self._seen, self._looks = [], 0, 0, 0
        seq, head, lines, stamp = self._seq, self._head, [], record_time(at)
        written: list[_Unit] = []
        done: list[tuple[asyncio.Future[int], int]] = []
        for unit in units:
            try:  # each unit on its own: one that cannot be sealed costs no other
                sealed, end = self._seal(unit[0], seq, head, at, stamp)
            except Exception as e:
                fixed = self._unsealable(unit, e)
                if fixed is None:
                    continue
                try:
                    sealed, end = self._seal(fixed[0], seq, head, at, stamp)
                except Exception:
                    log.exception("audit record cannot be written, even escaped")
                    continue
                unit = fixed
            lines.extend(sealed)
            seq, head = end
            written.append(unit)
            if unit[1] is not None:
                done.append((unit[1], seq))
        if not written:
            return
        self._busy = True
        self._jobs.put(functools.partial(self._write_batch_sync, b"".join(lines),
                                         (self._seq, self._head), (seq, head), done, written))

    @staticmethod
    def _seal(sealers: tuple[Sealer, ...], seq: int, head: str, at: datetime,
              stamp: str) -> tuple[list[bytes], tuple[int, str]]:
        lines = []
        for sealer in sealers:
            seq += 1
            line, head = sealer.seal(seq=seq, prev=head, at=at, stamp=stamp)
            lines.append(line)
        return lines, (seq, head)

    def _unsealable(self, unit: _Unit, error: Exception) -> _Unit | None:
        """A unit that could not be sealed: its waiter is refused (none of its records is
        written); a record nobody waits for is written escaped."""
        sealers, future = unit
        if future is None:
            try:
                return (self._escaped(sealers[0].body, error),), None
            except Exception:
                log.exception("audit record cannot be written, even escaped")
                return None
        log.error("audit record cannot be sealed: request refused", extra={"error": repr(error)})
        if not future.done():
            future.set_exception(AuditRecordRejected(
                f"audit record cannot be sealed: {type(error).__name__}"))
        return None

    def _batch_done(self, done: list[tuple[asyncio.Future[int], int]], written: list[_Unit],
                    problem: str | None) -> None:
        self._busy = False
        self._set_problem(problem)
        for future, seq in done:
            if future.done():
                continue
            if problem is None:
                future.set_result(seq)
            else:
                future.set_exception(AuditUnavailable(problem))
        if problem is not None:
            self._retain([u for u in written if u[1] is None])
            # Retried at once only for someone waiting; kept records alone wait for the next
            # record or tick (no busy retry against a full disk).
            if any(u[1] is not None for u in self._pending):
                self._schedule_flush()
            return
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self.record_nowait(AuditEvent(
                type="audit.recovered", result="failure",
                reason=f"{dropped} records nobody waited for were dropped while the log "
                       f"could not be written (more than {MAX_RETAINED} held)"))
        if self._pending:
            self._schedule_flush()

    def _retain(self, units: list[_Unit]) -> None:
        """Put records nobody waited for back in front of the next batch: a failed write
        loses none of them, up to MAX_RETAINED held (the oldest go first, and are counted)."""
        self._pending[:0] = units
        self._pending_records += sum(len(u[0]) for u in units)
        while self._pending_records > MAX_RETAINED and self._pending[0][1] is None:
            sealers, _ = self._pending.pop(0)
            self._pending_records -= len(sealers)
            self._dropped += len(sealers)

    def _tick(self) -> None:
        """Checkpoint an idle log now and then."""
        assert self._loop is not None
        self._jobs.put(self._checkpoint_if_due_sync)
        if self._pending:  # records kept from a failed write
            self._schedule_flush()
        self._timer = self._loop.call_later(self._cfg.checkpoint_interval.total_seconds(),
                                            self._tick)

    def _in_writer(self, job: Callable[[], T]) -> asyncio.Future[T]:
        assert self._loop is not None
        loop, future = self._loop, self._loop.create_future()

        def run() -> None:
            try:
                result = job()
            except Exception as e:  # handed to the waiting coroutine
                loop.call_soon_threadsafe(_fail, future, e)
            else:
                loop.call_soon_threadsafe(_settle, future, result)

        self._jobs.put(run)
        return future

    def with_segments(self, job: Callable[[str], T]) -> asyncio.Future[T]:
        """Run `job(name of the open segment)` on the writer thread between batches: the one
        place that may remove closed segments (archive), since the writer reads them when it
        reopens the log."""
        return self._in_writer(lambda: job(segment_name(self._segment)))

    # -- the writer thread -----------------------------------------------------------------

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("audit writer job failed")

    def _write_batch_sync(self, data: bytes, base: tuple[int, str], end: tuple[int, str],
                          done: list[tuple[asyncio.Future[int], int]],
                          written: list[_Unit]) -> None:
        """Append records sealed onto `base` (seq, hash), ending at `end`; report back."""
        assert self._loop is not None
        problem: str | None = None
        try:
            if self._fd < 0:
                discarded = self._prepare_sync()  # also sets aside what a failed write left
                self._loop.call_soon_threadsafe(self._note_recovered, discarded)
                if (self._seq, self._head) != base:
                    raise _Moved
            self._append_sync(data)
            self._seq, self._head = end
        except _Moved:
            problem = "audit log reopened at another record; retry"
        except OSError as e:
            problem = f"audit log not writable: {e.strerror or e}"
        except Exception as e:
            log.exception("audit write failed")
            problem = f"audit log failed: {e}"
        self._loop.call_soon_threadsafe(self._batch_done, done, written, problem)
        if problem is None:
            self._checkpoint_if_due_sync()  # while the next batch gathers

    def _append_sync(self, data: bytes) -> None:
        started = time.perf_counter()
        try:  # O_DSYNC: each write returns once its data is on disk
            written = os.write(self._fd, data)
            if written < len(data):
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self._fd, view):]
        except OSError:
            # Take back a partial write so the segment still ends on a whole record.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                os.close(self._fd)
                self._fd = -1  # reopened (and its tail recovered) on the next attempt
            raise
        self._size += len(data)
        if self.write_timer is not None:
            self.write_timer(time.perf_counter() - started)

    # -- checkpoints and rotation (writer thread) ------------------------------------------

    def _checkpoint_if_due_sync(self) -> None:
        if self._seq == self._cp_seq or self._fd < 0:
            return
        rotate = self._size >= self._cfg.segment_size
        if (self._seq - self._cp_seq >= self._cfg.checkpoint_every or rotate
                or time.monotonic() >= self._cp_due):
            try:
                self._checkpoint_sync()
                if rotate:
                    self._rotate_sync()
            except OSError as e:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(
                    self._set_problem, f"audit checkpoint not writable: {e.strerror or e}")

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
        self._cp_seq = self._seq
        self._cp_due = time.monotonic() + self._cfg.checkpoint_interval.total_seconds()

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
        """Find the head of the chain; set aside an incomplete last record. Returns bytes cut.

        When no segment holds a record (everything before was archived), the chain resumes
        after the last signed checkpoint, never from the start: a new chain would reuse
        sequence numbers and names the archive already holds."""
        found = segments(self.dir)
        last_cp = self._last_checkpoint()
        if last_cp is not None:
            self._cp_seq = int(last_cp["seq"])
        if not found:
            self._segment = 1
            if last_cp is not None:
                self._seq, self._head = int(last_cp["seq"]), str(last_cp["hash"])
                m = SEGMENT.match(str(last_cp.get("segment", "")))
                self._segment = int(m.group(1)) + 1 if m else 1
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
            if self._seq == 0 and last_cp is not None:
                self._seq, self._head = int(last_cp["seq"]), str(last_cp["hash"])
        return cut

    def _last_checkpoint(self) -> dict[str, Any] | None:
        cp = self.dir / CHECKPOINTS
        if not cp.exists():
            return None
        lines = [x for x in cp.read_bytes().splitlines() if x.strip()]
        return dict(json.loads(lines[-1])) if lines else None

    def _head_before(self, earlier: list[tuple[int, Path]]) -> tuple[int, str]:
        for _, path in reversed(earlier):
            lines = path.read_bytes().splitlines()
            if lines:
                tail = json.loads(lines[-1])
                return int(tail["seq"]), str(tail["hash"])
        return 0, GENESIS

    def _open_segment(self, n: int) -> None:
        path = self.dir / segment_name(n)
        # O_DSYNC makes write() also flush the data and the new size (what fdatasync would do):
        # one blocking call per batch, so the writer thread takes the GIL back once, not twice.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_DSYNC
        self._fd = os.open(path, flags, 0o600)
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


class _Moved(Exception):
    """Reopening found the chain's tail elsewhere than where the batch was sealed onto."""


def _settle(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
