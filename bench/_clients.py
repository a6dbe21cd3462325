"""A pool of real client processes (grpcio, spawned) that hammer one unary RPC in lockstep.

The processes start once and are reused for every round, so each round measures only calls.
In a round every client waits at a barrier, warms up, then counts successful calls for a
fixed window; all windows open together. A channel per socket is kept open across rounds.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from types import TracebackType
from typing import Any

CALL_TIMEOUT = 10.0
READY_TIMEOUT = 120.0  # spawning and importing grpcio in N processes on a busy machine
MAX_ERROR_SAMPLES = 3


@dataclass(frozen=True, slots=True)
class Task:
    socket: str
    method: str
    request: bytes
    metadata: tuple[tuple[str, str], ...]
    warmup: float
    duration: float


@dataclass(slots=True)
class ClientResult:
    calls: int = 0  # successful calls in the counted window
    errors: int = 0  # failed calls, warm-up included
    attempts: int = 0  # every call made, warm-up included
    elapsed: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(slots=True)
class RoundResult:
    rate: float  # successful calls per second, summed over clients
    errors: int
    attempts: int  # every call made by every client, warm-up included
    error_samples: list[str]


def _measure(call: Any, task: Task) -> ClientResult:
    import grpc  # type: ignore[import-untyped,unused-ignore]

    result = ClientResult()

    def once() -> bool:
        result.attempts += 1
        try:
            call(task.request, metadata=task.metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            result.errors += 1
            if len(result.error_samples) < MAX_ERROR_SAMPLES:
                result.error_samples.append(f"{e.code()}: {e.details()}")
            return False
        return True

    warm_end = time.perf_counter() + task.warmup
    while time.perf_counter() < warm_end:
        once()
    start = now = time.perf_counter()
    end = start + task.duration
    while now < end:
        if once():
            result.calls += 1
        now = time.perf_counter()
    result.elapsed = now - start
    return result


def _client(tasks: Queue[Task | None], results: Queue[ClientResult], barrier: Barrier) -> None:
    import grpc  # type: ignore[import-untyped,unused-ignore]

    channels: dict[str, grpc.Channel] = {}
    try:
        while (task := tasks.get()) is not None:
            channel = channels.get(task.socket)
            if channel is None:
                channel = channels[task.socket] = grpc.insecure_channel("unix:" + task.socket)
            call = channel.unary_unary(task.method)
            barrier.wait(READY_TIMEOUT)
            results.put(_measure(call, task))
    finally:
        for channel in channels.values():
            channel.close()


class ClientPool:
    def __init__(self, clients: int) -> None:
        ctx = mp.get_context("spawn")
        self._barrier = ctx.Barrier(clients)
        self._results: Queue[ClientResult] = ctx.Queue()
        self._tasks: list[Queue[Task | None]] = [ctx.Queue() for _ in range(clients)]
        self._procs = [
            ctx.Process(target=_client, args=(q, self._results, self._barrier), daemon=True)
            for q in self._tasks
        ]
        for p in self._procs:
            p.start()

    def run(self, task: Task) -> RoundResult:
        for q in self._tasks:
            q.put(task)
        deadline = time.monotonic() + READY_TIMEOUT + task.warmup + task.duration + CALL_TIMEOUT
        results: list[ClientResult] = []
        while len(results) < len(self._tasks):
            try:
                results.append(self._results.get(timeout=1.0))
            except queue.Empty:
                dead = [p.exitcode for p in self._procs if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"{len(self._tasks) - len(results)} clients did not report"
                                       f" (exit codes of dead clients: {dead})") from None
        return RoundResult(
            rate=sum(r.rate for r in results),
            errors=sum(r.errors for r in results),
            attempts=sum(r.attempts for r in results),
            error_samples=[s for r in results for s in r.error_samples][:MAX_ERROR_SAMPLES],
        )

    def close(self) -> None:
        for q in self._tasks:
            q.put(None)
        stop_processes(self._procs)

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def stop_processes(procs: Iterable[Any]) -> None:
    """Join each client process; one that does not finish in 10 s is terminated."""
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
            p.join()
