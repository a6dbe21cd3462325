"""The action record: Ensign's attribution from its issuance record, the reporter's words kept
apart, and `attribution: unknown` with the reason whenever Ensign cannot vouch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from ensign.daemon.actions import (
    ActionRecorder,
    Attribution,
    Checked,
    FleetIssuances,
    IssuanceIndex,
    Reported,
    Reporter,
    checked,
)
from ensign.daemon.audit import AuditEvent
from ensign.daemon.models import AttestedCaller, Caller
from ensign.daemon.registry import Entry

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
A = "spiffe://example.org/agent/agt_A"
B = "spiffe://example.org/agent/agt_B"
WHO = Attribution(kind="delegated", agent_id="agt_B", spiffe_id=B, entry_id="agt_B",
                  roles=("docs",), delegator="alice", chain=(B, A), grant="grt_1",
                  consent="grant", audience=("https://docs",), scopes=("docs.read",))
SERVICE = Entry(id="agt_S", name="docs", kind="service", spiffe_id="spiffe://example.org/docs",
                selectors=("unix:uid:7",))
REPORTER = Reporter(AttestedCaller(Caller(pid=42, uid=7, gid=7, start_ticks=1),
                                   frozenset({"unix:uid:7"}), {"unix.exe_sha256": "ab" * 32}),
                    (SERVICE,))


class FixedCheck:
    def __init__(self, result: Checked) -> None:
        self.result = result

    def check(self, token: str) -> Checked:
        return self.result


def _recorder(result: Checked, *, indexed: bool = True,
              fleet: FleetIssuances | None = None) -> ActionRecorder:
    index = IssuanceIndex(lambda: NOW)
    if indexed:
        index.merge({"j1": (WHO, T + 300)})
    return ActionRecorder(tokens=FixedCheck(result), index=index,  # type: ignore[arg-type]
                          clock=lambda: NOW, fleet=fleet)


def _report(detail: str = "") -> Reported:
    return checked("tok", "read", "https://docs/42", "success", detail)


def _event(recorder: ActionRecorder, reported: Reported) -> AuditEvent:
    return asyncio.run(recorder.event(reported, REPORTER))


# node-1's token.exchanged record of j1 as `issuance_attribution()` returns it (T - 10: recent)
SHIPPED: dict[str, Any] = {
    "type": "token.exchanged", "time": datetime.fromtimestamp(T - 10, UTC).isoformat(),
    "result": "success", "agent_id": "agt_B", "spiffe_id": B, "entry_id": "agt_B",
    "roles": ["docs"], "delegator": "alice", "audience": ["https://docs"],
    "scopes": ["docs.read"], "details": {"jti": "j1", "act": [B, A], "expires_in": 300,
                                         "grant": "grt_1", "consent": {"grant": "grt_1"}}}


def test_an_issued_token_is_attributed_from_the_record_not_from_the_reporter() -> None:
    ok = Checked("delegated", True, jti="j1", subject=B, expires_at=T + 60, fingerprint="f")
    claims = '{"agent_id": "agt_EVIL", "delegator": "mallory", "grant": "grt_x"}'
    e = _event(_recorder(ok), checked("tok", "read", "https://docs/42", "success", claims))
    assert (e.type, e.result, e.reason) == ("action", "success", "")
    assert (e.agent_id, e.spiffe_id, e.entry_id, e.delegator) == ("agt_B", B, "agt_B", "alice")
    assert (e.roles, e.audience, e.scopes) == (("docs",), ("https://docs",), ("docs.read",))
    d = e.details
    assert (d["attribution"], d["chain"], d["grant"], d["consent"]) == ("issued", [B, A],
                                                                        "grt_1", "grant")
    assert d["detail"] == {"agent_id": "agt_EVIL", "delegator": "mallory", "grant": "grt_x"}
    assert d["reporter"] == {"spiffe_ids": ["spiffe://example.org/docs"],
                             "entry_ids": ["agt_S"]}
    assert e.process is not None and (e.process.pid, e.process.uid) == (42, 7)
    assert d["token"] == {"kind": "delegated", "sha256": "f", "jti": "j1", "expires_at": T + 60}


def test_an_expired_token_names_whose_it_was_and_is_flagged_unknown() -> None:
    late = Checked("delegated", True, jti="j1", subject=B, expires_at=T - 90, fingerprint="f")
    e = _event(_recorder(late), _report())
    assert e.details["attribution"] == "unknown" and e.details["expired"] is True
    assert "token expired at 2026-12-01T11:58:30+00:00, 90 s before this report" in e.reason
    assert e.agent_id == "agt_B" and e.delegator == "alice"


@pytest.mark.parametrize(("result", "indexed", "why"), [
    (Checked("unknown", False, "malformed token: x", fingerprint="f"), True, "malformed token"),
    (Checked("delegated", True, jti="j1", subject=A, expires_at=T + 60), True,
     "names another agent than the token"),
    (Checked("delegated", True, jti="j1", subject=B, expires_at=T + 60), False,
     "no issuance record of jti j1"),
    (Checked("delegated", True, jti="j1", subject=B, expires_at=T + 60, node="node-1"), False,
     "issued by node node-1 of this trust domain (its key): the issuance record of jti j1 is in "
     "that node's trail"),
    (Checked("jwt-svid", True, jti="", subject=B, expires_at=T + 60), True, "carries no jti"),
])
def test_whatever_ensign_cannot_vouch_for_is_unknown_with_the_reason(
        result: Checked, indexed: bool, why: str) -> None:
    e = _event(_recorder(result, indexed=indexed), _report('{"agent_id": "agt_B"}'))
    assert e.details["attribution"] == "unknown" and why in e.reason
    assert (e.agent_id, e.spiffe_id, e.delegator, e.roles) == ("", "", "", ())
    assert "chain" not in e.details and "grant" not in e.details
    assert e.details["detail"] == {"agent_id": "agt_B"}  # still only the reporter's words


def test_in_a_fleet_another_nodes_token_is_attributed_from_its_shipped_record() -> None:
    asked: list[tuple[str, str]] = []

    async def lookup(node: str, jti: str) -> dict[str, Any] | None:
        asked.append((node, jti))
        return SHIPPED if (node, jti) == ("node-1", "j1") else None

    fleet = FleetIssuances(lookup, down=lambda: None, clock=lambda: NOW)
    theirs = Checked("delegated", True, jti="j1", subject=B, expires_at=T + 60, issued_at=T - 10,
                     fingerprint="f", node="node-1")
    e = _event(_recorder(theirs, indexed=False, fleet=fleet),
               _report('{"agent_id": "agt_EVIL"}'))
    assert (e.details["attribution"], e.reason) == ("issued", "")
    assert (e.agent_id, e.spiffe_id, e.delegator, e.roles) == ("agt_B", B, "alice", ("docs",))
    assert (e.details["chain"], e.details["grant"]) == ([B, A], "grt_1")
    assert e.details["token"]["node"] == "node-1"
    assert e.details["detail"] == {"agent_id": "agt_EVIL"}  # still only the reporter's words
    assert asked == [("node-1", "j1")]  # asked for that node's record of that jti, once
    # a shipped record naming another agent than the token does not attribute it
    other = Checked("delegated", True, jti="j1", subject=A, expires_at=T + 60, issued_at=T - 10,
                    node="node-1")
    e = _event(_recorder(other, indexed=False, fleet=fleet), _report())
    assert e.details["attribution"] == "unknown" and e.agent_id == ""
    assert "names another agent than the token" in e.reason
    # this node's own record wins: no question to the database
    asked.clear()
    _event(_recorder(theirs, indexed=True, fleet=fleet), _report())
    assert asked == []


def test_in_a_fleet_a_token_the_database_cannot_attribute_is_unknown_with_why() -> None:
    async def lookup(node: str, jti: str) -> dict[str, Any] | None:
        raise OSError("connection refused")

    fleet = FleetIssuances(lookup, down=lambda: None, clock=lambda: NOW)
    theirs = Checked("jwt-svid", True, jti="j9", subject=B, expires_at=T + 60, issued_at=T - 600,
                     node="node-1")
    e = _event(_recorder(theirs, indexed=False, fleet=fleet), _report())
    assert e.details["attribution"] == "unknown" and e.agent_id == ""
    assert e.reason == ("issued by node node-1 of this trust domain (its key), but its issuance "
                        "record of jti j9 cannot be read here: the fleet database cannot be "
                        "asked (connection refused)")
    assert e.details["token"]["node"] == "node-1"


def test_a_batch_asks_the_fleet_once_per_token_and_keeps_the_order() -> None:
    asked: list[str] = []

    async def lookup(node: str, jti: str) -> dict[str, Any] | None:
        asked.append(jti)
        return SHIPPED if jti == "j1" else None

    class ByToken:
        def check(self, token: str) -> Checked:
            return Checked("delegated", True, jti=token, subject=B, expires_at=T + 60,
                           issued_at=T - 600, node="node-1")

    recorder = ActionRecorder(tokens=ByToken(), index=IssuanceIndex(lambda: NOW),  # type: ignore[arg-type]
                              clock=lambda: NOW,
                              fleet=FleetIssuances(lookup, down=lambda: None, clock=lambda: NOW))
    batch = [checked(t, "read", f"r{i}", "success", "")
             for i, t in enumerate(["j1", "j2", "j1", "j1"])]
    events = asyncio.run(recorder.events(batch, REPORTER))
    assert [(e.details["resource"], e.details["attribution"]) for e in events] == [
        ("r0", "issued"), ("r1", "unknown"), ("r2", "issued"), ("r3", "issued")]
    assert sorted(asked) == ["j1", "j2"]
