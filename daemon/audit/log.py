"""The audit log: append-only JSON-lines segments, hash-chained, with signed checkpoints.

Records are written by one long-lived writer thread with group commit: every record queued
while the previous batch was on its way to disk is sealed into the next write and shares its
sync (segments are opened O_DSYNC; the files are segment.py's). `record()` returns only once its
record is on disk, so callers release a credential after that and never before. If the log
cannot be written, `record()` raises AuditUnavailable and the daemon stops issuing (fail
closed) until a write succeeds again. `deferred()` takes the records of a credential delivered
again whose first record is already durable, without holding the reply (README *Audit trail*:
what a crash may then lose); they do not ask for a write of their own at once, but ride with the
next record that does, or go after DEFER_LINGER, or once DEFER_BATCH of them wait: a warm cache
then costs a sync per tenth of a second instead of one per pass of the loop.

One caller's record never costs another's: each waiter's records are sealed on their own, so a
record that cannot be encoded (text that is not UTF-8) fails only its own waiter (its request
is refused with AuditRecordRejected) and a record nobody waits for is written with its text
escaped instead. Records nobody waits for that a failed write could not take are kept and
written with the next batch (up to MAX_RETAINED; beyond it, how many were dropped is recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ensign.daemon.audit.event import AuditEvent, Sealer, Unencodable, record_time, seal_run
from ensign.daemon.audit.segment import SegmentFile
from ensign.daemon.audit.writer import WriterThread
from ensign.daemon.config import AuditConfig
from ensign.daemon.errors import AuditRecordRejected, AuditUnavailable
from ensign.daemon.text import escape_tree

log = logging.getLogger(__name__)

MAX_LOOKS = 4
MAX_SEALERS = 256
T = TypeVar("T")
MAX_RETAINED = 10_000  # unwritten records nobody waits for, kept across failed writes
DEFER_MAX = 512  # records not yet durable beyond which deferred() waits: a crash's worst loss
DEFER_LINGER = 0.1  # seconds deferred records wait for company before a write of their own
DEFER_BATCH = 256  # deferred records waiting that are written without lingering further

# One caller's records, sealed together, and who waits for them (None: nobody).
_Unit = tuple[tuple[Sealer, ...], "asyncio.Future[int] | None"]


class AuditLog:
    def __init__(self, config: AuditConfig, data_dir: Path,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 defer_linger: float = DEFER_LINGER) -> None:
        self._cfg = config
        self.dir = data_dir / "audit"
        self._clock = clock
        # The file and the head of the chain belong to the writer thread while a batch is out;
        # the loop reads the head only between batches.
        self._file = SegmentFile(config, data_dir, clock)
        # Event loop: the next batch, unit by unit, and how many records it holds.
        self._pending: list[_Unit] = []
        self._pending_records = 0
        self._dropped = 0  # records nobody waited for, dropped after MAX_RETAINED
        self._sealers: dict[int, tuple[AuditEvent, Sealer]] = {}  # by id() of the event
        self._busy = False  # a batch is with the writer thread
        self._writing = 0  # how many records it holds
        self._flush_soon = False
        self._prompt = False  # the next batch holds a record that asks to be written now
        self._defer_linger = defer_linger
        self._linger: asyncio.TimerHandle | None = None  # when lingering deferred records go
        self._seen = 0  # records in the next batch when _flush last looked
        self._looks = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = WriterThread()
        self._timer: asyncio.TimerHandle | None = None
        self.problem: str | None = None
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        self.on_health_change: Callable[[], None] = lambda: None

    @property
    def chain(self) -> str:
        return self._file.chain

    @property
    def write_timer(self) -> Callable[[float], None] | None:
        """Called from the writer thread with the seconds each durable write took (metrics)."""
        return self._file.write_timer

    @write_timer.setter
    def write_timer(self, timer: Callable[[float], None] | None) -> None:
        self._file.write_timer = timer

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Load the key and find the chain's head. An unwritable log does not stop the daemon:
        it serves health and refuses to issue until the log can be written."""
        self._loop = asyncio.get_running_loop()
        self._file.load_key()
        try:
            self._note_recovered(self._file.prepare())
        except OSError as e:
            self._set_problem(f"audit log not writable: {e.strerror or e}")
        # One long-lived thread does every write, checkpoint and rotation, in order.
        self._writer.start()
        self._tick()

    def _note_recovered(self, discarded: int) -> None:
        if discarded:
            self.record_nowait(AuditEvent(
                type="audit.recovered", result="failure",
                reason=f"set aside {discarded} bytes of an incomplete record left by a crash",
            ))

    async def close(self, failure: str | None = None) -> None:
        """Write what is pending, a `daemon.stop` record (a failure with its reason when the
        daemon could not start) and a checkpoint, then stop the writer thread."""
        if not self._writer.running:
            return
        stop = (AuditEvent(type="daemon.stop") if failure is None else
                AuditEvent(type="daemon.stop", result="failure", reason=failure))
        with contextlib.suppress(AuditUnavailable):
            await self.record(stop)
            try:
                await self._in_writer(self._file.checkpoint)
            except OSError as e:
                log.warning("final audit checkpoint failed", extra={"error": str(e)})
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        await self._writer.stop()
        self._file.close()

    @property
    def queue_depth(self) -> int:
        """Records accepted but not yet handed to the writer (a metric)."""
        return self._pending_records

    @property
    def seq(self) -> int:
        """The last durable record's sequence number."""
        return self._file.seq

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
            future.set_result(self._file.seq)
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

    def deferred(self, events: Sequence[AuditEvent]) -> bool:
        """Append the records of a credential delivered again, whose first record is already
        durable, without waiting for them: a crash can lose them only while they are queued or
        in the batch being written. Returns False, appending nothing, while the log is failing
        or when it would then hold more than DEFER_MAX records not yet durable (queued or being
        written, of any kind): the caller waits with `durable()` instead. So a crash never loses
        more than DEFER_MAX deferred records, and a failing log still refuses. Raises
        AuditRecordRejected (nothing appended) as `durable()` would.
        """
        if (self.problem is not None or not events
                or self._pending_records + self._writing + len(events) > DEFER_MAX):
            return False
        try:
            sealers = tuple(self._sealer(e) for e in events)
        except Unencodable as e:
            log.error("audit record cannot be encoded: request refused",
                      extra={"type": events[0].type, "error": str(e)})
            raise AuditRecordRejected(f"audit record cannot be encoded: {e}") from None
        self._accept(sealers, None, linger=True)
        return True

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

    def _accept(self, sealers: tuple[Sealer, ...], future: asyncio.Future[int] | None,
                linger: bool = False) -> None:
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
        if not linger:
            self._prompt = True
        self._write_when_due()

    def _write_when_due(self) -> None:
        """Write the next batch soon if a record in it asks for that (or enough deferred ones
        wait); otherwise make sure the lingering deferred records go within DEFER_LINGER."""
        if not self._pending:
            return
        if self._prompt or self._pending_records >= DEFER_BATCH:
            self._schedule_flush()
        elif self._linger is None and self._loop is not None:
            self._linger = self._loop.call_later(self._defer_linger, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        self._prompt = True
        self._write_when_due()

    def _sealer(self, event: AuditEvent) -> Sealer:
        """Events are immutable once recorded: one recorded again is encoded once."""
        hit = self._sealers.get(id(event))
        if hit is not None and hit[0] is event:  # held here, so its id() is not reused
            return hit[1]
        if not self._file.chain:  # sealers carry the chain id: none before the key is loaded
            raise RuntimeError("the audit log is not open")
        if len(self._sealers) >= MAX_SEALERS:
            self._sealers.clear()
        sealer = Sealer(event.body(), self._file.chain)
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
        self._prompt = False
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        seq, head, lines, stamp = self._file.seq, self._file.head, [], record_time(at)
        written: list[_Unit] = []
        done: list[tuple[asyncio.Future[int], int]] = []
        for unit in units:
            try:  # each unit on its own: one that cannot be sealed costs no other
                sealed, end = seal_run(unit[0], seq, head, at, stamp)
            except Exception as e:
                fixed = self._unsealable(unit, e)
                if fixed is None:
                    continue
                try:
                    sealed, end = seal_run(fixed[0], seq, head, at, stamp)
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
        self._busy, self._writing = True, seq - self._file.seq
        self._writer.put(functools.partial(self._write_batch_sync, b"".join(lines),
                                         (self._file.seq, self._file.head), (seq, head), done,
                                         written))

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
        self._busy, self._writing = False, 0
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
        self._write_when_due()

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
        self._writer.put(self._checkpoint_if_due_sync)
        if self._pending:  # records kept from a failed write
            self._schedule_flush()
        self._timer = self._loop.call_later(self._cfg.checkpoint_interval.total_seconds(),
                                            self._tick)

    def _in_writer(self, job: Callable[[], T]) -> asyncio.Future[T]:
        assert self._loop is not None
        return self._writer.submit(self._loop, job)

    def with_segments(self, job: Callable[[str], T]) -> asyncio.Future[T]:
        """Run `job(name of the open segment)` on the writer thread between batches: the one
        place that may remove closed segments (archive), since the writer reads them when it
        reopens the log."""
        return self._in_writer(lambda: job(self._file.open_segment_name))

    # -- the writer thread -----------------------------------------------------------------

    def _write_batch_sync(self, data: bytes, base: tuple[int, str], end: tuple[int, str],
                          done: list[tuple[asyncio.Future[int], int]],
                          written: list[_Unit]) -> None:
        """Append records sealed onto `base` (seq, hash), ending at `end`; report back."""
        assert self._loop is not None
        problem: str | None = None
        f = self._file
        try:
            if f.fd < 0:
                discarded = f.prepare()  # also sets aside what a failed write left
                self._loop.call_soon_threadsafe(self._note_recovered, discarded)
                if (f.seq, f.head) != base:
                    raise _Moved
            f.append(data, end)
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

    def _checkpoint_if_due_sync(self) -> None:
        try:
            self._file.checkpoint_if_due()
        except OSError as e:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(
                self._set_problem, f"audit checkpoint not writable: {e.strerror or e}")

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

