"""The front with fakes (no socket, no daemon): the security header, the caller, `authorize`
before the request is read, one request.denied record per refusal (none when the servicer
recorded its own, none for AuditUnavailable), attestation records only when fresh."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from grpclib.const import Status
from multidict import MultiDict

from ensign.daemon.api import Call, Front, Policy, recv
from ensign.daemon.audit import AuditEvent
from ensign.daemon.errors import (
    ERROR_KEY,
    AuditUnavailable,
    EnsignError,
    NoIdentity,
    PermissionDenied,
)
from ensign.daemon.models import AttestedCaller, Caller
from ensign.daemon.registry import Entry
from ensign.daemon.server import Connection
from ensign.proto.delegation_grpc import DelegationBase

METHOD = "/ensign.delegation.v1.Delegation/ExchangeToken"
CALLER = Caller(pid=4242, uid=1000, gid=1000, start_ticks=1)
ENTRY = Entry(id="agt_1", name="a", kind="agent", spiffe_id="spiffe://example.org/agent/a",
              selectors=("unix:uid:1000",))


class FakeStream:
    def __init__(self, header: tuple[str, ...] = ("true",), message: object = "request") -> None:
        self.metadata = MultiDict([("workload.spiffe.io", v) for v in header])
        self.message = message
        self.reads = 0
        self.trailers: list[tuple[Status, str, dict[str, str]]] = []

    async def recv_message(self) -> object:
        self.reads += 1
        return self.message

    async def send_trailing_metadata(self, *, status: Status, status_message: str,
                                     metadata: dict[str, str]) -> None:
        self.trailers.append((status, status_message, metadata))


@dataclass
class FakeTracker:
    conn: Connection = field(default_factory=lambda: Connection(CALLER, None))
    limits: Any = None

    def connection_of(self, stream: object) -> Connection:
        return self.conn


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record_nowait(self, event: AuditEvent) -> None:
        self.events.append(event)

    def denials(self) -> list[AuditEvent]:
        return [e for e in self.events if e.type == "request.denied"]


class FakePipeline:
    def __init__(self) -> None:
        self.attested = AttestedCaller(caller=CALLER, selectors=frozenset({"unix:uid:1000"}),
                                       evidence={})
        self.hit: AttestedCaller | None = None

    def cached(self, caller: Caller) -> AttestedCaller | None:
        return self.hit

    async def attest(self, caller: Caller) -> AttestedCaller:
        return self.attested


class FakeResolver:
    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    def resolve(self, attested: AttestedCaller) -> list[Entry]:
        if not self.entries:
            raise NoIdentity(f"no entry matches pid {attested.caller.pid}")
        return self.entries


class Servicer:
    """A servicer as they all are: reads the request, attests, resolves, may refuse."""

    def __init__(self, refuse: EnsignError | None = None, recorded: bool = False) -> None:
        self.refuse = refuse
        self.recorded = recorded
        self.calls: list[tuple[Call, object, list[Entry]]] = []

    async def ExchangeToken(self, stream: Any, call: Call) -> None:
        request = await recv(stream)
        await call.attested()
        entries = call.identities()
        self.calls.append((call, request, entries))
        if self.refuse is not None:
            call.entry = entries[0]
            call.recorded = self.recorded
            raise self.refuse

    async def TokenKeys(self, stream: Any, call: Call) -> None:  # the service's other RPC
        raise AssertionError("not called in these tests")


@dataclass
class World:
    tracker: FakeTracker = field(default_factory=FakeTracker)
    audit: FakeAudit = field(default_factory=FakeAudit)
    pipeline: FakePipeline = field(default_factory=FakePipeline)
    entries: list[Entry] = field(default_factory=lambda: [ENTRY])

    def run(self, servicer: Servicer, stream: FakeStream, policy: Policy = Policy()) -> None:
        front = Front(tracker=self.tracker, pipeline=self.pipeline,  # type: ignore[arg-type]
                      resolver=FakeResolver(self.entries), audit=self.audit)  # type: ignore[arg-type]
        service = front.serve(DelegationBase, servicer, policy)
        asyncio.run(service.__mapping__()[METHOD].func(stream))


def _denied(event: AuditEvent) -> tuple[str, str, str, int | None]:
    return (event.details["method"], event.details["status"], event.reason,
            event.process.uid if event.process else None)


def test_a_served_call_gets_the_caller_its_identities_and_one_attestation_record() -> None:
    w, s = World(), Servicer()
    w.run(s, FakeStream())
    [(call, request, entries)] = s.calls
    assert (call.method, call.caller, request, entries) == ("ExchangeToken", CALLER, "request",
                                                            [ENTRY])
    assert [e.type for e in w.audit.events] == ["attestation"]
    # From the cache (not fresh) there is no second attestation record.
    w.pipeline.hit = AttestedCaller(caller=CALLER, selectors=frozenset(), evidence={},
                                    fresh=False)
    w.run(s, FakeStream())
    assert [e.type for e in w.audit.events] == ["attestation"]


def test_a_missing_or_doubled_header_is_refused_before_anything_and_audited() -> None:
    for header in ((), ("true", "true"), ("false",)):
        w, s, stream = World(), Servicer(), FakeStream(header=header)
        w.run(s, stream)
        assert stream.trailers == [(Status.INVALID_ARGUMENT,
                                    "security header missing from request",
                                    {ERROR_KEY: "InvalidRequest"})]
        assert (stream.reads, s.calls) == (0, [])
        assert [_denied(e) for e in w.audit.events] == [
            ("ExchangeToken", "INVALID_ARGUMENT", "security header missing from request", 1000)]


def test_a_service_without_the_header_rule_serves_without_it() -> None:
    w, s = World(), Servicer()
    w.run(s, FakeStream(header=()), Policy(header=False))
    assert len(s.calls) == 1


def test_authorize_runs_before_the_request_is_read() -> None:
    def admins_only(caller: Caller) -> None:
        raise PermissionDenied(f"uid {caller.uid} may not use the admin API")

    w, s, stream = World(), Servicer(), FakeStream()
    w.run(s, stream, Policy(header=False, authorize=admins_only, audit="auth", prefix="admin."))
    assert stream.reads == 0 and s.calls == []
    assert stream.trailers == [(Status.PERMISSION_DENIED, "uid 1000 may not use the admin API",
                                {ERROR_KEY: "PermissionDenied"})]
    assert [_denied(e) for e in w.audit.events] == [
        ("admin.ExchangeToken", "PERMISSION_DENIED", "uid 1000 may not use the admin API", 1000)]


def test_a_servicer_refusal_is_one_record_with_what_was_established() -> None:
    w, s, stream = World(), Servicer(refuse=PermissionDenied("audience x not allowed")),\
        FakeStream()
    w.run(s, stream)
    assert stream.trailers == [(Status.PERMISSION_DENIED, "audience x not allowed",
                                {ERROR_KEY: "PermissionDenied"})]
    [denial] = w.audit.denials()
    assert _denied(denial) == ("ExchangeToken", "PERMISSION_DENIED", "audience x not allowed",
                               1000)
    assert (denial.agent_id, denial.entry_id) == ("agt_1", "agt_1")
    assert "evidence" in denial.details  # the attestation it had


def test_call_recorded_suppresses_the_duplicate_record() -> None:
    w, s, stream = World(), Servicer(refuse=PermissionDenied("no grant"), recorded=True),\
        FakeStream()
    w.run(s, stream)
    assert stream.trailers[0][0] == Status.PERMISSION_DENIED  # still refused
    assert w.audit.denials() == []


def test_no_identity_is_audited() -> None:
    w, stream = World(entries=[]), FakeStream()
    w.run(Servicer(), stream)
    assert stream.trailers == [(Status.PERMISSION_DENIED, "no identity issued",
                                {ERROR_KEY: "NoIdentity"})]
    assert [_denied(e)[:2] for e in w.audit.denials()] == [("ExchangeToken", "PERMISSION_DENIED")]


def test_a_caller_that_could_not_be_pinned_is_unauthenticated_and_audited() -> None:
    w, stream = World(), FakeStream()
    w.tracker.conn = Connection(None, "caller pid 4242 exited before it could be pinned")
    w.run(Servicer(), stream)
    assert stream.trailers[0][0] == Status.UNAUTHENTICATED
    [denial] = w.audit.denials()
    assert denial.reason == "caller pid 4242 exited before it could be pinned"
    assert denial.process is None


def test_audit_unavailable_is_not_recorded_in_the_log_that_failed() -> None:
    w, stream = World(), FakeStream()
    w.run(Servicer(refuse=AuditUnavailable("audit log not writable: ENOSPC")), stream)
    assert stream.trailers[0][0] == Status.UNAVAILABLE
    assert w.audit.denials() == []


def test_audit_policy_none_and_auth() -> None:
    w = World()
    w.run(Servicer(refuse=PermissionDenied("x")), FakeStream(), Policy(audit="none"))
    assert w.audit.denials() == []
    w.run(Servicer(refuse=PermissionDenied("x")), FakeStream(), Policy(audit="auth"))
    assert w.audit.denials() == []  # "auth": only refusals before the servicer ran
    w.run(Servicer(), FakeStream(header=()), Policy(audit="auth"))
    assert len(w.audit.denials()) == 1


def test_a_stream_without_a_message_is_a_bad_request() -> None:
    w, s, stream = World(), Servicer(), FakeStream(message=None)
    w.run(s, stream)
    assert stream.trailers == [(Status.INVALID_ARGUMENT, "request message missing",
                                {ERROR_KEY: "InvalidRequest"})]
    assert len(w.audit.denials()) == 1


def test_limits_refuse_a_uid_over_its_connections() -> None:
    class Limits:
        def connections(self, uid: int) -> int:
            return 5

        def allow(self, uid: int) -> bool:
            return True

    w, s, stream = World(), Servicer(), FakeStream()
    w.tracker = FakeTracker(Connection(CALLER, None, over_limit=True), Limits())
    w.run(s, stream)
    assert stream.trailers[0][:2] == (
        Status.UNAVAILABLE, "uid 1000 has too many connections open (5); close some and retry")
    assert (stream.reads, s.calls) == (0, [])
    assert len(w.audit.denials()) == 1
