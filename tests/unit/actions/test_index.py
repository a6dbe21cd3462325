"""Ensign's own word on whose a token is: the index of issuance records by jti, fed as the
audit log writes and read back from the segments at start, bounded in size and in time."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ensign.daemon.actions import Attribution, IssuanceIndex
from ensign.daemon.audit import AuditEvent, AuditLog
from ensign.daemon.config import AuditConfig

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
A = "spiffe://example.org/agent/agt_A"
B = "spiffe://example.org/agent/agt_B"


def exchanged(jti: str, *, agent: str = "agt_B", act: tuple[str, ...] = (B, A), grant: str = "",
              consent: dict[str, Any] | None = None, expires_in: int = 300,
              result: str = "success") -> AuditEvent:
    return AuditEvent(type="token.exchanged", result=result, agent_id=agent,  # type: ignore[arg-type]
                      spiffe_id=act[0], entry_id=agent, roles=("docs",), delegator="alice",
                      audience=("https://docs",), scopes=("docs.read",),
                      details={"jti": jti, "act": list(act), "grant": grant,
                               "consent": consent or {}, "expires_in": expires_in})


def jwt_issued(jti: str, not_after: datetime) -> AuditEvent:
    return AuditEvent(type="svid.issued", agent_id="agt_A", spiffe_id=A, entry_id="agt_A",
                      roles=("r",), audience=("https://docs",),
                      details={"kind": "jwt", "jti": jti, "not_after": not_after.isoformat()})


def test_a_chain_token_names_every_hop_and_the_consent_it_rests_on() -> None:
    index = IssuanceIndex(lambda: NOW)
    index.observe(exchanged("j1", consent={"grant": "grt_1"}).body())
    who, expires = index.lookup("j1") or (None, 0)
    assert who == Attribution(kind="delegated", agent_id="agt_B", spiffe_id=B, entry_id="agt_B",
                              roles=("docs",), delegator="alice", chain=(B, A), grant="grt_1",
                              consent="grant", audience=("https://docs",), scopes=("docs.read",))
    assert expires == int(NOW.timestamp()) + 300
    index.observe(exchanged("j2", act=(A,), agent="agt_A", consent={"may_act": True}).body())
    assert (index.lookup("j2") or (None,))[0].consent == "may_act"  # type: ignore[union-attr]


def test_a_jwt_svid_names_its_agent_and_nothing_else_counts() -> None:
    index = IssuanceIndex(lambda: NOW)
    index.observe(jwt_issued("s1", NOW + timedelta(minutes=5)).body())
    index.observe(exchanged("refused", result="denied").body())
    index.observe(AuditEvent(type="svid.issued", agent_id="agt_A",
                             details={"kind": "x509", "serial": "1f"}).body())
    index.observe(AuditEvent(type="action", details={"token": {"jti": "s2"}}).body())
    assert len(index) == 1
    who, expires = index.lookup("s1") or (None, 0)
    assert who is not None and (who.kind, who.agent_id, who.chain) == ("jwt-svid", "agt_A", (A,))
    assert expires == int((NOW + timedelta(minutes=5)).timestamp())
    assert index.lookup("refused") is None


def test_the_index_is_bounded_in_entries_and_in_time() -> None:
    now = [NOW]
    index = IssuanceIndex(lambda: now[0], max_entries=3, keep_after_expiry=timedelta(hours=1))
    for i in range(4):
        index.observe(exchanged(f"j{i}").body())
    assert len(index) == 3 and index.lookup("j0") is None and index.lookup("j3") is not None
    now[0] = NOW + timedelta(hours=2)  # j1..j3 expired more than an hour ago
    index.observe(exchanged("fresh").body())
    assert len(index) == 1 and index.lookup("fresh") is not None
    # a JWT-SVID handed out again keeps its one entry (and many agents share attributions)
    index.observe(jwt_issued("s", now[0] + timedelta(minutes=5)).body())
    index.observe(jwt_issued("s", now[0] + timedelta(minutes=5)).body())
    assert len(index) == 2


def _write(data: Path, events: list[tuple[datetime, AuditEvent]], **cfg: Any) -> None:
    async def main() -> None:
        clock = [NOW]
        log = AuditLog(AuditConfig(**cfg), data, lambda: clock[0])
        log.open()
        for at, event in events:
            clock[0] = at
            await log.record(event)
        clock[0] = NOW
        await log.close()
    asyncio.run(main())


def test_at_start_the_tokens_that_may_still_be_reported_are_read_back(tmp_path: Path) -> None:
    old, recent = NOW - timedelta(hours=3), NOW - timedelta(minutes=10)
    _write(tmp_path, [
        (old, exchanged("old")),                         # expired hours ago
        *[(old, AuditEvent(type="attestation", reason="x" * 300)) for _ in range(20)],
        (recent, exchanged("recent", consent={"grant": "grt_9"})),
        (recent, jwt_issued("svid", recent + timedelta(minutes=5))),
        (NOW, exchanged("now")),
        (NOW, AuditEvent(type="daemon.start")),
    ], segment_size=4096, checkpoint_every=1)  # several segments
    segments = sorted((tmp_path / "audit").glob("segment-*.jsonl"))
    assert len(segments) > 1
    loaded = IssuanceIndex.load(tmp_path / "audit", NOW, timedelta(minutes=5))
    assert set(loaded) == {"recent", "svid", "now"}
    assert loaded["recent"][0].grant == "grt_9"
    assert loaded["recent"][1] == int(recent.timestamp()) + 300
    index = IssuanceIndex(lambda: NOW)
    index.observe(exchanged("now", agent="agt_X", act=("spiffe://example.org/x",)).body())
    index.merge(loaded)  # what the observer saw first stays
    assert (index.lookup("now") or (None,))[0].agent_id == "agt_X"  # type: ignore[union-attr]
    assert index.lookup("recent") is not None


def test_reading_back_skips_an_empty_new_segment_and_a_torn_line(tmp_path: Path) -> None:
    _write(tmp_path, [(NOW, exchanged("j1"))])
    audit = tmp_path / "audit"
    last = sorted(audit.glob("segment-*.jsonl"))[-1]
    with open(last, "ab") as f:
        f.write(json.dumps(exchanged("torn").body())[:40].encode())
    (audit / "segment-00000099.jsonl").write_bytes(b"")  # just rotated: empty
    assert set(IssuanceIndex.load(audit, NOW, timedelta(minutes=5))) == {"j1"}
    assert IssuanceIndex.load(tmp_path / "nothing", NOW, timedelta(minutes=5)) == {}
