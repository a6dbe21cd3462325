"""In a fleet, another node's issuance record as shipped to the database: found after shipping
lag within a bounded wait, not waited for when old, never asked while the database is down,
every failure a reason (never an exception), found records cached, one lookup per token."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from ensign.daemon.actions import FleetIssuances

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
B = "spiffe://example.org/agent/agt_B"
SHIPPED: dict[str, Any] = {
    "type": "svid.issued", "time": datetime.fromtimestamp(T - 1, UTC).isoformat(),
    "result": "success", "agent_id": "agt_B", "spiffe_id": B, "entry_id": "agt_B",
    "roles": ["r"], "audience": ["https://docs"],
    "details": {"kind": "jwt", "jti": "j1",
                "not_after": datetime.fromtimestamp(T + 300, UTC).isoformat()}}


class Database:
    """A fleet database whose answer for j1 arrives after `misses` lookups (shipping lag)."""

    def __init__(self, misses: int = 0, record: dict[str, Any] | None = None) -> None:
        self.misses = misses
        self.record = SHIPPED if record is None else record
        self.asked: list[tuple[str, str]] = []

    async def lookup(self, node: str, jti: str) -> dict[str, Any] | None:
        self.asked.append((node, jti))
        await asyncio.sleep(0)
        if len(self.asked) <= self.misses or jti != "j1":
            return None
        return self.record


def _fleet(db: Database, *, down: str | None = None, wait: float = 2.0) -> FleetIssuances:
    return FleetIssuances(db.lookup, down=lambda: down, clock=lambda: NOW, wait=wait)


def test_a_record_shipped_moments_after_the_report_is_found_within_the_wait() -> None:
    db = Database(misses=2)
    found = asyncio.run(_fleet(db).find("node-1", "j1", T - 1))
    assert found.reason == "" and found.found is not None
    who, expires = found.found
    assert (who.kind, who.agent_id, who.spiffe_id, expires) == ("jwt-svid", "agt_B", B, T + 300)
    assert db.asked == [("node-1", "j1")] * 3


def test_a_recent_token_never_shipped_is_unknown_after_the_bounded_wait() -> None:
    db = Database()
    found = asyncio.run(_fleet(db, wait=0.2).find("node-1", "j2", T - 1))
    assert found.found is None
    assert found.reason == ("not in the fleet database yet (node node-1 ships its trail in the "
                            "background; waited 0.2 s)")
    assert len(db.asked) > 1  # asked again while waiting


def test_an_old_token_not_in_the_database_is_not_waited_for() -> None:
    db = Database()
    found = asyncio.run(_fleet(db).find("node-1", "j2", T - 3600))
    assert (found.found, found.reason) == (None, "not in the fleet database")
    assert db.asked == [("node-1", "j2")]


def test_with_the_database_down_it_is_not_asked_and_the_reason_says_why() -> None:
    db = Database()
    found = asyncio.run(_fleet(db, down="connection refused").find("node-1", "j1", T - 1))
    assert (found.found, found.reason) == (
        None, "the fleet database cannot be asked (connection refused)")
    assert db.asked == []


def test_a_failing_or_silent_database_is_a_reason_not_an_exception() -> None:
    async def failing(node: str, jti: str) -> dict[str, Any] | None:
        raise RuntimeError("permission denied for function issuance_attribution\n  detail")

    async def silent(node: str, jti: str) -> dict[str, Any] | None:
        await asyncio.Event().wait()
        return None

    found = asyncio.run(FleetIssuances(failing, down=lambda: None, clock=lambda: NOW)
                        .find("node-1", "j1", T - 1))
    assert found.reason == ("the fleet database cannot be asked (permission denied for function "
                            "issuance_attribution detail)")
    found = asyncio.run(FleetIssuances(silent, down=lambda: None, clock=lambda: NOW,
                                       query_timeout=0.05).find("node-1", "j1", T - 1))
    assert (found.found, found.reason) == (
        None, "the fleet database did not answer within 0.05 s")


def test_an_unreadable_record_attributes_nothing() -> None:
    db = Database(record={"type": "svid.issued", "time": "yesterday", "details": {"jti": "j1"}})
    found = asyncio.run(_fleet(db).find("node-1", "j1", T - 1))
    assert (found.found, found.reason) == (None, "node node-1's issuance record of it cannot be "
                                                 "read")


def test_found_records_are_cached_and_reports_at_once_share_one_lookup() -> None:
    db = Database(misses=1)
    fleet = _fleet(db)

    async def reports() -> list[Any]:
        return list(await asyncio.gather(*(fleet.find("node-1", "j1", T - 1) for _ in range(5))))

    results = asyncio.run(reports())
    assert all(r.found is not None for r in results)
    assert len(db.asked) == 2  # one lookup (a miss, then the hit) for five reports
    again = asyncio.run(fleet.find("node-1", "j1", T - 1))
    assert again.found == results[0].found and len(db.asked) == 2
    # the cache is by node: the same jti from another node's key is asked for separately
    asyncio.run(fleet.find("node-3", "j1", T - 3600))
    assert db.asked[-1] == ("node-3", "j1")
