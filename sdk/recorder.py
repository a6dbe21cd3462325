"""Reporting actions to Ensign without ever holding a request: a bounded queue, drained by one
background task over one long-lived `Actions/RecordStream` on the local Workload API socket.

`record()` never blocks and never raises for a full queue: the record is dropped, counted
(`dropped`, and the Prometheus counter `ensign_sdk_actions_dropped_total{reason}`) and said in
the log (at most once per LOG_EVERY seconds). Reasons: `queue_full` (the daemon is away or
slower than the service; the queue holds `max_queue` records meanwhile and drains when it is
back), `unconfirmed` (sent on a stream that broke before Ensign confirmed them durable: they may
or may not be in the trail, and are not sent again, which could record an action twice),
`refused` (Ensign refused the record's shape; the log says why), `shutdown` (still queued when
the service stopped and `aclose()` ran out of time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from grpclib.client import Channel, Stream
from prometheus_client import Counter

from ensign.proto import actions_pb2 as pb
from ensign.proto.actions_grpc import ActionsStub
from ensign.sdk.workload import BACKOFF, HEADER, socket_path

log = logging.getLogger("ensign.sdk")

MAX_DETAIL_BYTES = 4096
LOG_EVERY = 10.0
#: how long the drain waits for more records before it sends a batch that is not full: a batch
#: costs the service and the daemon about the same whatever it holds, a busy service then sends
#: a few dozen records per batch instead of one, and a record reaches the trail this much later
LINGER = 0.05
DROPPED = Counter("ensign_sdk_actions_dropped_total",
                  "action records not confirmed by Ensign, by reason", ["reason"])
RECORDED = Counter("ensign_sdk_actions_recorded_total",
                   "action records Ensign confirmed durable, by attribution", ["attribution"])

_CHILDREN: dict[str, Any] = {}


def _recorded(attribution: str) -> Any:
    """The counter's child for a label value: `labels()` locks and validates on every call."""
    child = _CHILDREN.get(attribution)
    if child is None:
        child = _CHILDREN[attribution] = RECORDED.labels(attribution)
    return child


Item = tuple[str, str, str, str, Mapping[str, Any] | None]  # token, action, resource, outcome,
# detail: encoded by the drain, off the request's path


class ActionReporter:
    def __init__(self, socket: str | None = None, *, max_queue: int = 10_000,
                 max_batch: int = 256, max_unconfirmed: int = 8,
                 linger: float = LINGER) -> None:
        self._socket = socket_path(socket)
        self._queue: deque[Item] = deque()
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._window = max_unconfirmed
        self._linger = linger
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped: dict[str, int] = {}
        self.recorded = 0
        self._logged = 0.0
        self._unlogged = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def record(self, token: str, action: str, resource: str, outcome: str,
               detail: Mapping[str, Any] | None = None) -> bool:
        """Queue one action; False (and counted) if it had to be dropped. Never blocks."""
        if self._closing or len(self._queue) >= self._max_queue:
            self._drop("queue_full", 1)
            return False
        self._queue.append((token, action, resource, outcome, detail))
        if not self._wake.is_set():
            self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def aclose(self, grace: float = 2.0) -> None:
        """Stop taking records; send what is queued, for at most `grace` seconds."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        if self._queue:
            self._drop("shutdown", len(self._queue))
            self._queue.clear()

    # -- the drain -------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = BACKOFF[0]
        while self._queue or not self._closing:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._stream()
                delay = BACKOFF[0]
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the daemon is away or restarting: keep queueing, retry
                log.warning("cannot report actions to Ensign (%s); %d queued, retrying",
                            f"{type(e).__name__}: {e}"[:300], len(self._queue))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter)
                delay = min(delay * 2, BACKOFF[1])

    async def _stream(self) -> None:
        channel = Channel(path=self._socket)
        unconfirmed: deque[int] = deque()  # sizes of the batches sent and not yet answered
        try:
            async with ActionsStub(channel).RecordStream.open(metadata=HEADER) as stream:
                await stream.send_request()  # before the receiving side listens
                slots = asyncio.Semaphore(self._window)
                receiving = asyncio.ensure_future(self._receive(stream, unconfirmed, slots))
                try:
                    await self._send(stream, unconfirmed, slots, receiving)
                    await stream.end()
                    await receiving
                finally:
                    receiving.cancel()
                    with contextlib.suppress(BaseException):
                        await receiving
        finally:
            channel.close()
            if unconfirmed:
                self._drop("unconfirmed", sum(unconfirmed))

    async def _send(self, stream: Stream[pb.ActionBatch, pb.BatchResult],
                    unconfirmed: deque[int], slots: asyncio.Semaphore,
                    receiving: asyncio.Future[None]) -> None:
        while self._queue or not self._closing:
            if receiving.done():  # the stream broke: raise what broke it
                receiving.result()
                raise ConnectionError("the Actions stream ended")
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()  # set by record(), aclose(), or the receiver ending
                continue
            if self._linger and len(self._queue) < self._max_batch and not self._closing:
                await asyncio.sleep(self._linger)
            await slots.acquire()  # as many batches unconfirmed as allowed
            if receiving.done():
                continue
            n = min(len(self._queue), self._max_batch)
            records = [_message(*self._queue.popleft()) for _ in range(n)]
            unconfirmed.append(n)
            await stream.send_message(pb.ActionBatch(records=records))

    async def _receive(self, stream: Stream[pb.ActionBatch, pb.BatchResult],
                       unconfirmed: deque[int], slots: asyncio.Semaphore) -> None:
        try:
            async for answer in stream:
                if unconfirmed:
                    unconfirmed.popleft()
                slots.release()
                for r in answer.results:
                    if r.error:
                        self._drop("refused", 1, r.error)
                    else:
                        self.recorded += 1
                        _recorded(r.attribution).inc()
        finally:  # wake the sender, wherever it waits, to see that this side ended
            for _ in range(self._window):
                slots.release()
            self._wake.set()

    def _drop(self, reason: str, n: int, why: str = "") -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        DROPPED.labels(reason).inc(n)
        self._unlogged += n
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            log.warning("dropped %d action record(s): %s%s (%d dropped in all)",
                        self._unlogged, reason, f": {why[:300]}" if why else "",
                        sum(self.dropped.values()))
            self._logged, self._unlogged = now, 0



def _message(token: str, action: str, resource: str, outcome: str,
             detail: Mapping[str, Any] | None) -> pb.ActionRecord:
    text = json.dumps(detail, separators=(",", ":")) if detail else ""
    if len(text.encode()) > MAX_DETAIL_BYTES:
        text = json.dumps({"detail_dropped": f"longer than {MAX_DETAIL_BYTES} bytes"})
    return pb.ActionRecord(token=token, action=action, resource=resource, outcome=outcome,
                           detail=text)
