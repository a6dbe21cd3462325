"""`ensign.actions.v1.Actions`: reporters tell the trail what agents did with their tokens.

The front has found the reporter; it is attested like any caller and must hold an identity (a
registry entry, agent or service): the trail then says which workload vouched for each action,
and a process the registry does not know cannot write into the tamper-evident trail at all (it
could otherwise fill it with records in the name of any token it has seen). The attribution is
`actions.ActionRecorder`'s; the records go through the audit log's group commit.

`Record` answers once its record is durable. `RecordStream` takes batches: each is appended as
one group (one sync for all its records, shared with whatever else is being written), and
answered once durable, with one result per record in order; the next batches are read while
earlier ones are being written, up to MAX_PENDING_BATCHES, after which reading waits (HTTP/2
flow control holds the sender back). A record refused for its shape gets its error in its
result and a `request.denied` record; the others of the batch are written all the same.
"""

from __future__ import annotations

import asyncio
import contextlib

from grpclib.server import Stream

from ensign.daemon.actions import ActionRecorder, Reported, Reporter, checked
from ensign.daemon.api import _records
from ensign.daemon.api.front import Call, recv
from ensign.daemon.audit import AuditEvent
from ensign.daemon.audit.log import AuditLog
from ensign.daemon.errors import InvalidRequest
from ensign.proto import actions_pb2 as pb

MAX_BATCH = 512
MAX_PENDING_BATCHES = 8
#: a batch being written: its durability, its results (seq filled in once durable), its records
Pending = tuple[asyncio.Future[int], list[pb.RecordResult], list[AuditEvent]]


class ActionsApi:
    def __init__(self, recorder: ActionRecorder, audit: AuditLog) -> None:
        self._recorder = recorder
        self._audit = audit

    async def Record(self, stream: Stream[pb.ActionRecord, pb.RecordResult], call: Call) -> None:
        request = await recv(stream)
        reporter = await _reporter(call)
        event = await self._recorder.event(_reported(request), reporter)
        seq = await self._audit.record(event)
        await stream.send_message(_result(event, seq))

    async def RecordStream(self, stream: Stream[pb.ActionBatch, pb.BatchResult],
                           call: Call) -> None:
        await _reporter(call)  # refused at once without an identity, before any batch
        queue: asyncio.Queue[Pending | None] = asyncio.Queue(MAX_PENDING_BATCHES)
        answering = asyncio.ensure_future(self._answer(stream, queue))
        try:
            async for batch in stream:
                if answering.done():
                    break  # it failed: its error ends the call below
                results, events = await self._batch(batch, call)
                await _put(queue, (self._audit.durable(events), results, events), answering)
            await _put(queue, None, answering)
            await answering
        finally:
            if not answering.done():
                answering.cancel()
                with contextlib.suppress(BaseException):
                    await answering
        answering.result()  # raises what ended the answers (the audit log failing)

    async def _batch(self, batch: pb.ActionBatch, call: Call
                     ) -> tuple[list[pb.RecordResult], list[AuditEvent]]:
        if len(batch.records) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} records per batch, "
                                 f"got {len(batch.records)}")
        reporter = await _reporter(call)  # still there, still holding an identity
        results: list[pb.RecordResult | None] = []
        reported: list[Reported] = []
        for request in batch.records:
            try:
                reported.append(_reported(request))
                results.append(None)  # filled in below, in order
            except InvalidRequest as err:
                self._audit.record_nowait(_records.denied(
                    "RecordStream", call.caller, err, reporter.attested))
                results.append(pb.RecordResult(error=err.diagnostics()[:512]))
        events = await self._recorder.events(reported, reporter)
        made = iter(events)
        return [r if r is not None else _result(next(made), 0) for r in results], events

    @staticmethod
    async def _answer(stream: Stream[pb.ActionBatch, pb.BatchResult],
                      queue: asyncio.Queue[Pending | None]) -> None:
        while (item := await queue.get()) is not None:
            durable, results, events = item
            last = await durable
            first = last - len(events) + 1  # one durable() call: consecutive sequence numbers
            for r in (r for r in results if not r.error):
                r.seq, first = first, first + 1
            await stream.send_message(pb.BatchResult(results=results))


async def _put(queue: asyncio.Queue[Pending | None], item: Pending | None,
               answering: asyncio.Future[None]) -> None:
    """Queue a batch's answer; stop waiting if the answering task ended (its error wins)."""
    putting = asyncio.ensure_future(queue.put(item))
    await asyncio.wait({putting, answering}, return_when=asyncio.FIRST_COMPLETED)
    if not putting.done():
        putting.cancel()
        answering.result()


async def _reporter(call: Call) -> Reporter:
    attested = await call.attested()
    return Reporter(attested, tuple(call.identities()))


def _reported(request: pb.ActionRecord) -> Reported:
    return checked(request.token, request.action, request.resource, request.outcome,
                   request.detail)


def _result(event: AuditEvent, seq: int) -> pb.RecordResult:
    return pb.RecordResult(seq=seq, attribution=str(event.details.get("attribution", "")),
                           reason=event.reason, agent_id=event.agent_id,
                           spiffe_id=event.spiffe_id, delegator=event.delegator)
