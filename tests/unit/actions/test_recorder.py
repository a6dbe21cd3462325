"""The action record: Ensign's attribution from its issuance record, the reporter's words kept
apart, and `attribution: unknown` with the reason whenever Ensign cannot vouch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ensign.daemon.actions import (
    ActionRecorder,
    Attribution,
    Checked,
    IssuanceIndex,
    Reporter,
    checked,
)
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


def _recorder(result: Checked, *, indexed: bool = True) -> ActionRecorder:
    index = IssuanceIndex(lambda: NOW)
    if indexed:
        index.merge({"j1": (WHO, T + 300)})
    return ActionRecorder(tokens=FixedCheck(result), index=index,  # type: ignore[arg-type]
                          clock=lambda: NOW)


def _report(detail: str = "") -> object:
    return checked("tok", "read", "https://docs/42", "success", detail)


def test_an_issued_token_is_attributed_from_the_record_not_from_the_reporter() -> None:
    ok = Checked("delegated", True, jti="j1", subject=B, expires_at=T + 60, fingerprint="f")
    claims = '{"agent_id": "agt_EVIL", "delegator": "mallory", "grant": "grt_x"}'
    e = _recorder(ok).event(checked("tok", "read", "https://docs/42", "success", claims),
                            REPORTER)
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
    e = _recorder(late).event(_report(), REPORTER)
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
    e = _recorder(result, indexed=indexed).event(_report('{"agent_id": "agt_B"}'), REPORTER)
    assert e.details["attribution"] == "unknown" and why in e.reason
    assert (e.agent_id, e.spiffe_id, e.delegator, e.roles) == ("", "", "", ())
    assert "chain" not in e.details and "grant" not in e.details
    assert e.details["detail"] == {"agent_id": "agt_B"}  # still only the reporter's words
