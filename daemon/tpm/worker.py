"""One TPM connection on one thread, with a watchdog and reconnection.

Why a dedicated thread: ESAPI calls block (in C, with the GIL released) and an ESAPI context
must not be used by two threads at once, so every command runs on this thread, one at a time;
the thread *is* the lock, and a sequence of commands that must not interleave (read PCRs, then
quote) is one function. Why a watchdog: the swtpm and device TCTIs block forever when the TPM
stops answering (reference/tpm.md, pitfall 8) and Esys_SetTimeout does not help. A call that
overruns `timeout` is abandoned together with its thread and context; later calls go to a fresh
thread and context. At most one abandoned thread exists: while it is still stuck, calls fail
at once instead of piling up more stuck threads.

Transport failures (any non-TPM response-code layer: TCTI, ESAPI sequence errors after the
TPM restarted) drop the context, and the next call reconnects by running `setup` again, which
rebuilds the session state (flushes leftovers, reloads keys). TPM response codes (a policy
check failed, ...) leave the context alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ensign.daemon.tpm.errors import TpmCommandFailed, TpmUnavailable

# tpm2-tss logs every failing command (even expected ones) to stderr; set before loading it.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss import ESAPI, TSS2_Exception

log = logging.getLogger(__name__)

S = TypeVar("S")  # the session state `setup` builds on a fresh context
T = TypeVar("T")

SETUP_TIMEOUT = 60.0
_RC_LAYER_MASK = 0xFF0000  # TSS2_RC: bits 16..23 name the layer; 0 is the TPM itself


def is_transport_error(err: TSS2_Exception) -> bool:
    return bool(int(err.rc) & _RC_LAYER_MASK)


class _Thread(Generic[S]):
    """A daemon thread owning one ESAPI context (daemon: a stuck one never blocks exit)."""

    def __init__(self, name: str, tcti: str, setup: Callable[[ESAPI], S]) -> None:
        self._tcti = tcti
        self._setup = setup
        self._ctx: ESAPI | None = None
        self._state: S | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[S], Any], cf.Future[Any]] | None] = (
            queue.SimpleQueue())
        self.abandoned = False
        self.running_since: float | None = None  # monotonic start of the command in progress
        self.in_setup = False  # connecting: deriving an RSA EK can take a hardware TPM seconds
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[[S], T]) -> cf.Future[T]:
        fut: cf.Future[T] = cf.Future()
        self._jobs.put((fn, fut))
        return fut

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None and not self.abandoned:
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            self.running_since = time.monotonic()
            try:
                fut.set_result(self._call(fn))
            except BaseException as e:  # handed to the waiting caller
                fut.set_exception(e)
            finally:
                self.running_since = None
        self._drop()
        while True:  # commands queued behind an abandoned one: fail them, do not strand them
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job[1].set_running_or_notify_cancel():
                job[1].set_exception(TpmUnavailable("TPM connection abandoned (watchdog)"))

    def busy_for(self) -> float:
        since = self.running_since
        return 0.0 if since is None else time.monotonic() - since

    def _call(self, fn: Callable[[S], T]) -> T:
        try:
            if self._state is None:
                self.in_setup = True
                try:
                    self._ctx = ESAPI(self._tcti)
                    self._state = self._setup(self._ctx)
                except BaseException:
                    self._drop()  # never keep a context whose setup did not finish
                    raise
                finally:
                    self.in_setup = False
                self.running_since = time.monotonic()  # the command's own deadline starts now
            return fn(self._state)
        except TSS2_Exception as e:
            if is_transport_error(e) or self._state is None:
                self._drop()
                raise TpmUnavailable(f"TPM connection failed ({self._tcti}): {e}") from None
            raise TpmCommandFailed(f"TPM refused the command: {e}") from None

    def _drop(self) -> None:
        ctx, self._ctx, self._state = self._ctx, None, None
        if ctx is not None:
            with contextlib.suppress(Exception):
                ctx.close()


class TpmWorker(Generic[S]):
    """Run functions of the session state `S` on the TPM thread, each under a deadline."""

    def __init__(self, tcti: str, setup: Callable[[ESAPI], S], *, timeout: float) -> None:
        self.tcti = tcti
        self._setup = setup
        self._timeout = timeout
        # Connecting may create primary keys (an RSA EK from its template): slow on real TPMs.
        self._setup_timeout = max(SETUP_TIMEOUT, timeout)
        self._mutex = threading.Lock()  # guards the two fields below (loop and CLI threads)
        self._current: _Thread[S] | None = None
        self._stuck: _Thread[S] | None = None
        self._generation = 0

    def _thread(self) -> _Thread[S]:
        with self._mutex:
            if self._stuck is not None:
                if self._stuck.thread.is_alive():
                    raise TpmUnavailable(
                        f"TPM ({self.tcti}) has not answered a command for more than "
                        f"{self._timeout:g}s (watchdog); waiting for it to return")
                self._stuck = None
            if self._current is None:
                self._generation += 1
                self._current = _Thread(f"ensign-tpm-{self._generation}", self.tcti,
                                        self._setup)
            return self._current

    def _overrun(self, worker: _Thread[S]) -> TpmUnavailable:
        with self._mutex:
            if self._current is worker:
                worker.abandoned = True
                worker.stop()
                self._current, self._stuck = None, worker
        log.warning("TPM command overran the watchdog; abandoning its connection",
                    extra={"tcti": self.tcti, "timeout": self._timeout})
        return TpmUnavailable(f"TPM ({self.tcti}) did not answer within {self._timeout:g}s")

    # The watchdog times the command the thread is running, not the wait in the queue: a burst
    # of requests queued behind each other must not look like a hung TPM. A waiter wakes at
    # the running command's deadline and declares an overrun only if that command is still
    # running then (whoever's it is: its own waiter may be gone).

    def _next_wait(self, worker: _Thread[S]) -> float:
        if worker.abandoned and not worker.thread.is_alive():  # our job was never run
            raise TpmUnavailable(f"TPM ({self.tcti}) connection was abandoned (watchdog)")
        limit = self._setup_timeout if worker.in_setup else self._timeout
        busy = worker.busy_for()
        if busy >= limit:
            raise self._overrun(worker)
        return limit - busy

    def call(self, fn: Callable[[S], T]) -> T:
        """Blocking form, for start-up and callers outside the event loop."""
        worker = self._thread()
        fut = worker.submit(fn)
        while True:
            try:
                return fut.result(self._next_wait(worker))
            except TimeoutError:
                continue

    async def acall(self, fn: Callable[[S], T]) -> T:
        worker = self._thread()
        fut = asyncio.wrap_future(worker.submit(fn))
        # If this waiter is cancelled or times out, nobody else reads the result: mark it read.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        while True:
            # asyncio.wait, not wait_for: it never cancels `fut` (the command keeps running on
            # its thread regardless) and, on Python 3.11, wait_for can hang when its caller is
            # cancelled just as the timeout fires.
            done, _ = await asyncio.wait({fut}, timeout=self._next_wait(worker))
            if done:
                return fut.result()

    def reset(self) -> None:
        """Drop the connection; the next call reconnects (and runs `setup` again)."""
        with self._mutex:
            current, self._current = self._current, None
        if current is not None:
            current.stop()

    def close(self) -> None:
        self.reset()
