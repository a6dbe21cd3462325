"""OCSF export: every record type the trail writes becomes an event that the OCSF schema (at
the version Ensign declares) accepts, carrying who acted and its place in the hash chain."""

from __future__ import annotations

import hashlib
import typing
from datetime import UTC, datetime
from typing import Any

import pytest

from ensign.daemon.audit import OCSF_VERSION, AuditEvent, EventType, Process, canonical, change
from ensign.daemon.audit.event import seal
from ensign.daemon.audit.export import MAPPERS, to_ocsf
from ensign.daemon.registry import ChangeEvent
from tests.support.ocsf import problems

AT = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
AGENT = "agt_01JZ0000000000000000000000"
SPIFFE = f"spiffe://example.org/agent/{AGENT}"
HELPER = "spiffe://example.org/agent/agt_01JZ0000000000000000000001"
SHA = "ab" * 32
PROC = Process(pid=4242, uid=1001, gid=1001, exe_sha256=SHA)
ENTRY = {"id": AGENT, "name": "indexer", "state": "active", "selectors": ["unix:uid:1001"]}


def _agent_event(**kw: Any) -> AuditEvent:
    return AuditEvent(agent_id=AGENT, spiffe_id=SPIFFE, entry_id=AGENT, process=PROC, **kw)


# Every shape the daemon writes, built as its record builders build them.
EVENTS: dict[str, AuditEvent] = {
    "attestation": AuditEvent(type="attestation", process=PROC, details={
        "selectors": ["unix:uid:1001", f"unix:sha256:{SHA}"],
        "evidence": {"unix.exe_path": "/opt/agent/bin/agent", "unix.exe_sha256": SHA}}),
    "x509": _agent_event(type="svid.issued", roles=("reader",), details={
        "kind": "x509", "serial": "1f3a", "not_after": "2026-11-30T13:00:00+00:00",
        "ttl": 3600}),
    "x509-sds": _agent_event(type="svid.issued", details={
        "kind": "x509", "serial": "1f3b", "not_after": "2026-11-30T13:00:00+00:00",
        "ttl": 3600, "via": "sds"}),
    "jwt": _agent_event(type="svid.issued", audience=("https://api.example.org",), details={
        "kind": "jwt", "jti": "j1", "not_after": "2026-11-30T12:05:00+00:00", "ttl": 300}),
    "validated": _agent_event(type="svid.validated", audience=("https://api.example.org",),
                              details={"jti": "j1", "validator": ["spiffe://example.org/api"],
                                       "token_audience": ["https://api.example.org"],
                                       "expires_at": 1795000000}),
    "misdirected": _agent_event(type="svid.validated", result="denied",
                                reason="token audience does not include 'payments'",
                                audience=("payments",), details={
                                    "jti": "j1", "validator": [],
                                    "token_audience": ["https://api.example.org"],
                                    "expires_at": 1795000000}),
    "denied": AuditEvent(type="request.denied", result="denied", reason="no identity issued",
                         process=PROC, audience=("x",),
                         details={"method": "FetchJWTSVID", "status": "PERMISSION_DENIED"}),
    "denied-admin": AuditEvent(type="request.denied", result="denied", reason="not admin",
                               process=Process(pid=7, uid=65534, gid=65534),
                               details={"method": "admin.ListAgents",
                                        "status": "PERMISSION_DENIED"}),
    "denied-gone": AuditEvent(type="request.denied", result="denied", reason="caller exited",
                              details={"method": "FetchX509SVID", "status": "UNAUTHENTICATED"}),
    "exchanged": _agent_event(type="token.exchanged", delegator="alice@example.org",
                              audience=("https://docs.example.org",), scopes=("docs:read",),
                              details={"jti": "d1", "act": [SPIFFE], "grant": "grt_1",
                                       "expires_in": 300}),
    "exchange-denied": _agent_event(type="token.exchanged", result="denied",
                                    reason="scope not allowed", delegator="alice@example.org"),
    # an action, reported by the docs service (the process), done by the agent for alice
    "action": AuditEvent(type="action", agent_id=AGENT, spiffe_id=SPIFFE, entry_id=AGENT,
                         delegator="alice@example.org", audience=("https://docs.example.org",),
                         scopes=("docs.read",), process=PROC, details={
                             "action": "GET /docs/{id}", "resource": "https://docs.example.org/"
                             "docs/42", "attribution": "issued", "chain": [SPIFFE, HELPER],
                             "grant": "grt_1", "consent": "grant",
                             "token": {"kind": "delegated", "jti": "d1", "sha256": "ab" * 16,
                                       "expires_at": 1795000000},
                             "reporter": {"spiffe_ids": ["spiffe://example.org/docs"],
                                          "entry_ids": ["agt_docs"]},
                             "detail": {"status": 200, "agent_id": "agt_EVIL"}}),
    "action-unknown": AuditEvent(type="action", result="denied", process=PROC,
                                 reason="malformed token: Not enough segments", details={
                                     "action": "delete", "resource": "doc:7",
                                     "attribution": "unknown",
                                     "token": {"kind": "unknown", "sha256": "cd" * 16},
                                     "reporter": {"spiffe_ids": [], "entry_ids": []}}),
    **{f"registry-{a}": change(ChangeEvent(
        a, AGENT, "ensign" if a == "expire" else "uid:0",
        None if a == "register" else ENTRY, None if a == "delete" else ENTRY, reason="why"))
       for a in typing.get_args(typing.get_type_hints(ChangeEvent)["action"])
       if not a.startswith(("role_", "grant_"))},
    **{a: change(ChangeEvent(a, "reader", "uid:0", None if a.endswith("create") else
                             {"name": "reader"}, None if a.endswith("delete") else
                             {"name": "reader"})) for a in ("role_create", "role_update",
                                                            "role_delete")},
    "grant_create": change(ChangeEvent("grant_create", "grt_1", "uid:0", None, {"id": "grt_1"})),
    "grant_revoke": change(ChangeEvent("grant_revoke", "grt_1", "uid:0", {"id": "grt_1"},
                                       {"id": "grt_1", "revoked_at": 1}, reason="done")),
    "anomaly": AuditEvent(type="anomaly", result="failure", agent_id=AGENT, spiffe_id=SPIFFE,
                          reason="rate for agt: saw 50/s; expected 1/s; surge",
                          process=Process(pid=0, uid=1001, gid=0),
                          details={"signal": "rate", "seen": "50/s", "expected": "1/s",
                                   "why": "surge", "values": {"count": 50},
                                   "action": "suspend"}),
    "ca.rotated": AuditEvent(type="ca.rotated", details={"authorities": ["k1", "k2"],
                                                         "signing": "k2"}),
    "daemon.start": AuditEvent(type="daemon.start", details={
        "trust_domain": "example.org", "attestors": ["unix", "systemd"]}),
    "daemon.stop": AuditEvent(type="daemon.stop"),
    "audit.recovered": AuditEvent(type="audit.recovered", result="failure",
                                  reason="set aside 12 bytes"),
    "audit.archived": AuditEvent(type="audit.archived", actor="uid:0", details={
        "segments": ["segment-00000001.jsonl", "segment-00000002.jsonl"]}),
    "tpm": AuditEvent(type="tpm", result="failure", reason="PCR 7 changed",
                      details={"event": "tpm.policy", "pcrs": [7]}),
}


def _record(event: AuditEvent, seq: int = 41) -> dict[str, Any]:
    return seal(event.body(), seq=seq, prev="cd" * 32, chain="c0ffee", at=AT)


def test_every_record_type_has_its_own_mapping_and_a_sample_here() -> None:
    types = set(typing.get_args(EventType))
    assert set(MAPPERS) == types
    assert {e.type for e in EVENTS.values()} == types


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_each_exported_event_passes_the_ocsf_schema(name: str) -> None:
    event = to_ocsf(_record(EVENTS[name]))
    assert event["metadata"]["version"] == OCSF_VERSION
    assert problems(event) == []


def test_the_schema_checks_catch_what_the_old_export_wrote() -> None:
    # The mapping before this module: no user or service in Authentication, a uid in
    # actor.process.uid, record_integrity at the top level. Both checks must refuse it.
    event = to_ocsf(_record(EVENTS["jwt"]))
    del event["user"], event["service"]
    event["actor"]["process"]["uid"] = 1001
    event["record_integrity"] = {"fingerprint": "x"}
    found = "\n".join(problems(event))
    assert "'user' is a required property" in found
    assert "'service'" in found and "'dst_endpoint'" in found
    assert "1001 is not of type 'string'" in found
    assert "'record_integrity' was unexpected" in found


def test_authentication_names_the_agent_its_process_and_the_service() -> None:
    event = to_ocsf(_record(EVENTS["jwt"]))
    assert (event["class_uid"], event["activity_id"], event["type_uid"]) == (3002, 1, 300201)
    assert event["user"] == {"uid": AGENT, "name": SPIFFE, "type_id": 99, "type": "Workload"}
    assert event["actor"]["process"] == {"pid": 4242, "user": {"uid": "1001",
                                                                "type": "Unix account"}}
    assert event["service"] == {"name": "SPIFFE Workload API"}
    assert to_ocsf(_record(EVENTS["x509-sds"]))["service"] == {"name": "Envoy SDS"}
    assert event["session"]["uid"] == "j1"
    validated = to_ocsf(_record(EVENTS["validated"]))
    assert validated["service"] == {"name": "https://api.example.org",
                                    "uid": "spiffe://example.org/api"}
    assert validated["logon_process"]["user"]["uid"] == "1001"
    assert to_ocsf(_record(EVENTS["misdirected"]))["status_id"] == 2


def test_a_token_exchange_names_the_delegator() -> None:
    event = to_ocsf(_record(EVENTS["exchanged"]))
    assert event["actor"]["user"] == {"uid": "alice@example.org", "type_id": 1,
                                      "type": "User"}
    assert event["user"]["name"] == SPIFFE
    assert event["service"] == {"name": "https://docs.example.org"}


@pytest.mark.parametrize(("name", "activity"), [
    ("registry-register", 1), ("registry-update", 3), ("registry-suspend", 12),
    ("registry-resume", 13), ("registry-decommission", 4), ("registry-delete", 4),
    ("grant_create", 1), ("grant_revoke", 4), ("role_create", 1), ("ca.rotated", 3)])
def test_entity_management_activities(name: str, activity: int) -> None:
    event = to_ocsf(_record(EVENTS[name]))
    assert (event["class_uid"], event["activity_id"]) == (3004, activity)
    assert event["entity"]["uid"] in (AGENT, "reader", "grt_1", "k2")


def test_entity_management_names_the_admin_and_the_state_before_and_after() -> None:
    event = to_ocsf(_record(EVENTS["registry-suspend"]))
    assert event["actor"] == {"user": {"uid": "0", "type_id": 2, "type": "Admin"}}
    assert event["entity"]["name"] == "indexer" and event["entity_result"]["data"] == ENTRY
    assert event["comment"] == "why"
    assert to_ocsf(_record(EVENTS["registry-expire"]))["actor"] == {"app_name": "ensign"}


def test_a_finding_has_its_title_and_stays_new() -> None:
    event = to_ocsf(_record(EVENTS["anomaly"]))
    assert (event["class_uid"], event["status_id"], event["severity_id"]) == (2004, 1, 4)
    assert event["finding_info"]["uid"] == "c0ffee:41"
    assert event["finding_info"]["title"] == f"rate for {SPIFFE}"
    assert event["resources"] == [{"uid": AGENT, "name": SPIFFE, "type": "Workload"}]


def test_the_lifecycle_names_the_app() -> None:
    event = to_ocsf(_record(EVENTS["daemon.start"]))
    assert (event["class_uid"], event["activity_id"]) == (6002, 3)
    assert event["app"] == {"name": "Ensign", "vendor_name": "Ensign"}


def test_unmapped_is_the_record_whose_hash_a_siem_can_recompute() -> None:
    record = _record(EVENTS["exchanged"])
    unmapped = to_ocsf(record)["unmapped"]
    assert unmapped == record
    body = {k: v for k, v in unmapped.items() if k != "hash"}
    assert hashlib.sha256(canonical(body)).hexdigest() == unmapped["hash"]
    assert (unmapped["seq"], unmapped["prev"], unmapped["chain"]) == (41, "cd" * 32, "c0ffee")


def test_an_action_is_api_activity_by_the_agent_for_the_human_on_the_resource() -> None:
    event = to_ocsf(_record(EVENTS["action"]))
    assert (event["class_uid"], event["activity_id"], event["activity_name"]) == (6003, 2, "Read")
    assert event["actor"]["user"] == {"uid": AGENT, "name": SPIFFE, "type_id": 99,
                                      "type": "Workload"}
    assert event["actor"]["session"]["uid"] == "d1"
    (auth,) = event["actor"]["authorizations"]
    assert auth["policy"]["uid"] == "grt_1"
    assert auth["policy"]["data"]["chain"] == [SPIFFE, HELPER]
    assert auth["policy"]["desc"] == f"{SPIFFE} <- {HELPER} <- alice@example.org"
    assert event["api"] == {"operation": "GET /docs/{id}", "service": {
        "name": "https://docs.example.org", "uid": "spiffe://example.org/docs"}}
    assert event["resources"] == [{"uid": "https://docs.example.org/docs/42",
                                   "name": "https://docs.example.org/docs/42",
                                   "type": "Resource"}]
    assert event["src_endpoint"] == {"name": SPIFFE}
    assert event["dst_endpoint"] == {"svc_name": "spiffe://example.org/docs"}
    # the reporter's claims stay in the record (unmapped), never in the actor
    assert event["unmapped"]["details"]["detail"]["agent_id"] == "agt_EVIL"


@pytest.mark.parametrize(("operation", "activity"), [
    ("read", "Read"), ("documents.write", "Update"), ("DELETE /docs/1", "Delete"),
    ("POST /docs", "Create"), ("summarize", "Other")])
def test_an_actions_verb_names_its_activity(operation: str, activity: str) -> None:
    e = EVENTS["action"]
    event = to_ocsf(_record(AuditEvent(type="action", details={**e.details,
                                                                "action": operation})))
    assert event["activity_name"] == activity and problems(event) == []


def test_an_unattributed_action_names_no_agent_and_says_why() -> None:
    event = to_ocsf(_record(EVENTS["action-unknown"]))
    assert event["actor"]["user"]["type"] == "Unknown" and "authorizations" not in event["actor"]
    assert event["status"] == "Failure" and event["severity_id"] == 3
    assert event["status_detail"] == "malformed token: Not enough segments"
