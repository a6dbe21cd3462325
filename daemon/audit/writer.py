"""The audit log's writer thread: one long-lived thread that runs jobs in the order given.

Every write, checkpoint, rotation and archive removal of the log runs here, so the files have
one writer and the event loop never blocks on the disk. A job's result or exception is handed
back to the loop as a future's (`submit`); a job nobody waits for (`put`) that fails is logged.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class WriterThread:
    def __init__(self, name: str = "audit-writer") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()

    def put(self, job: Callable[[], None]) -> None:
        """Run `job` on the thread after those already given; nobody waits for it."""
        self._jobs.put(job)

    def submit(self, loop: asyncio.AbstractEventLoop, job: Callable[[], T]) -> asyncio.Future[T]:
        """Run `job` on the thread; its result (or exception) settles the returned future."""
        future = loop.create_future()

        def run() -> None:
            try:
                result = job()
            except Exception as e:  # handed to the waiting coroutine
                loop.call_soon_threadsafe(_fail, future, e)
            else:
                loop.call_soon_threadsafe(_settle, future, result)

        self._jobs.put(run)
        return future

    async def stop(self) -> None:
        """Let the jobs already given finish, then end the thread."""
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("audit writer job failed")


def _settle(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
