"""Blocking work of one attestor, bounded: its own few threads, and a share per uid.

An attestor that reads files the caller chose (hashing an executable, a script, a bundle) can
be made slow by that caller. Each attestor therefore runs such work on its own threads, at most
`total` at once, and at most `per_uid` for one uid: a caller's slow files delay its own uid's
attestations, never another attestor's and never all of another uid's. A slot is held until its
thread has finished, also when the waiting request gave up (a thread cannot be cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Bounded:
    def __init__(self, name: str, *, total: int, per_uid: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=total, thread_name_prefix=name)
        self._total = asyncio.Semaphore(total)
        self._per_uid_limit = per_uid
        self._per_uid: dict[int, tuple[asyncio.Semaphore, list[int]]] = {}  # sem, [users]
        self._running = 0

    @property
    def busy(self) -> int:
        """Threads at work now (for `state()`)."""
        return self._running

    async def run(self, uid: int, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on one of this attestor's threads, once `uid` and the attestor have a
        free slot. Cancelling the caller leaves the slot held until `fn` returns."""
        sem, users = self._per_uid.setdefault(uid, (asyncio.Semaphore(self._per_uid_limit), [0]))
        users[0] += 1
        try:
            await sem.acquire()
            try:
                await self._total.acquire()
            except BaseException:
                sem.release()
                raise
        except BaseException:
            self._leave(uid, users)
            raise

        def release(_: object = None) -> None:
            self._running -= 1
            self._total.release()
            sem.release()
            self._leave(uid, users)

        self._running += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except BaseException:  # closed
            release()
            raise
        future.add_done_callback(release)
        return await asyncio.shield(future)

    def _leave(self, uid: int, users: list[int]) -> None:
        users[0] -= 1
        if users[0] == 0:
            self._per_uid.pop(uid, None)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._executor.shutdown(wait=False, cancel_futures=True)
