"""The audit trail as OCSF events, for SIEM pipelines that check the schema. Pure.

One OCSF version (OCSF_VERSION) and one function per record type (MAPPERS): adding a record
type is adding one function. Every event carries who acted (`actor`), the agent and its SPIFFE
ID (`user` in Authentication, `resources` in findings), the delegator (`actor.user` of a token
exchange), and in `unmapped` the record exactly as the trail holds it, with its place in the
hash chain (`chain`, `seq`, `prev`, `hash`): SHA-256 over the canonical JSON of `unmapped`
without `hash` is `hash`, so a SIEM can check each event against the signed chain.

  3002 Authentication         svid.issued, svid.validated, attestation, request.denied,
                              token.exchanged
  3004 Entity Management      registry.change, role.change, grant.change, ca.rotated
  2004 Detection Finding      anomaly
  6002 Application Lifecycle  daemon.start, daemon.stop, audit.recovered, audit.archived
  6003 API Activity           action (an agent's action on a resource, with its delegation chain)
  0    Base Event             tpm, and any type without a mapping
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

OCSF_VERSION = "1.5.0"
PRODUCT = {"name": "Ensign", "vendor_name": "Ensign"}
WORKLOAD_API = {"name": "SPIFFE Workload API"}

Record = dict[str, Any]
Event = dict[str, Any]

#: class_uid -> (class name, category uid, category name)
CLASSES: dict[int, tuple[str, int, str]] = {
    0: ("Base Event", 0, "Uncategorized"),
    2004: ("Detection Finding", 2, "Findings"),
    3002: ("Authentication", 3, "Identity & Access Management"),
    3004: ("Entity Management", 3, "Identity & Access Management"),
    6002: ("Application Lifecycle", 6, "Application Activity"),
    6003: ("API Activity", 6, "Application Activity"),
}
_SEVERITY = {1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
# registry actions -> Entity Management activity (1.5.0: 12 Suspend, 13 Resume)
_ENTITY_ACTIVITY = {
    "register": (1, "Create"), "update": (3, "Update"), "delete": (4, "Delete"),
    "suspend": (12, "Suspend"), "resume": (13, "Resume"), "decommission": (4, "Delete"),
    "expire": (4, "Delete"), "role_create": (1, "Create"), "role_update": (3, "Update"),
    "role_delete": (4, "Delete"), "grant_create": (1, "Create"), "grant_revoke": (4, "Delete"),
}
_ENTITY_TYPE = {"registry.change": "Agent", "role.change": "Role", "grant.change": "Grant"}


def to_ocsf(record: Record) -> Event:
    """One audit record as one OCSF event of the class its type maps to."""
    return MAPPERS.get(str(record.get("type", "")), base_event)(record)


# -- 3002 Authentication ---------------------------------------------------------------------

def svid_issued(r: Record) -> Event:
    """An agent obtained an SVID (Workload API, or SDS for Envoy): a logon, the SVID its
    session."""
    d = r.get("details") or {}
    kind = "JWT-SVID" if d.get("kind") == "jwt" else "X.509-SVID"
    e = _event(r, 3002, 1, "Logon", f"{_who(r)} received a {kind}")
    service = {"name": "Envoy SDS"} if d.get("via") == "sds" else WORKLOAD_API
    e.update(user=_agent_user(r), service=service, auth_protocol_id=99,
             auth_protocol=f"SPIFFE {kind}", session=_session(d.get("jti") or d.get("serial"),
                                                                d.get("not_after")))
    _actor_process(e, r)
    return e


def svid_validated(r: Record) -> Event:
    """A validating service checked an agent's JWT-SVID (ValidateJWTSVID): the agent logs on
    to that service; the validator is the logon process."""
    d = r.get("details") or {}
    audience = ", ".join(r.get("audience", [])) or "(none)"
    e = _event(r, 3002, 1, "Logon", f"{_who(r)}'s JWT-SVID presented for {audience}")
    service: dict[str, Any] = {"name": audience}
    if d.get("validator"):
        service["uid"] = str(d["validator"][0])
    e.update(user=_agent_user(r), service=service, auth_protocol_id=99,
             auth_protocol="SPIFFE JWT-SVID", session=_session(d.get("jti"), None))
    if d.get("expires_at"):
        e["session"]["expiration_time"] = int(d["expires_at"]) * 1000
    if r.get("process"):
        e["logon_process"] = _process(r["process"])
    return e


def attestation(r: Record) -> Event:
    """The kernel's facts about a caller, before any identity is resolved."""
    e = _event(r, 3002, 99, "Attest", f"attested {_unix(r)}")
    e.update(user=_unix_user(r), service=WORKLOAD_API)
    _actor_process(e, r)
    evidence = (r.get("details") or {}).get("evidence") or {}
    path, sha = evidence.get("unix.exe_path"), evidence.get("unix.exe_sha256")
    if path and "actor" in e:
        e["actor"]["process"]["file"] = _file(str(path), str(sha or ""))
    return e


def request_denied(r: Record) -> Event:
    method = str((r.get("details") or {}).get("method", ""))
    api = "Ensign Admin API" if method.startswith("admin.") else WORKLOAD_API["name"]
    e = _event(r, 3002, 1, "Logon", f"{method or 'request'} refused for {_who(r)}")
    e.update(user=_agent_user(r) if r.get("agent_id") else _unix_user(r),
             service={"name": api, "uid": method} if method else {"name": api})
    _actor_process(e, r)
    return e


def token_exchanged(r: Record) -> Event:
    """RFC 8693: the agent (user) gets a token to act for the delegator (actor.user)."""
    d = r.get("details") or {}
    audience = ", ".join(r.get("audience", []))
    e = _event(r, 3002, 99, "Token Exchange",
               f"{_who(r)} acting for {r.get('delegator') or '(unknown)'} at {audience or '-'}")
    e.update(user=_agent_user(r), service={"name": audience or "Ensign Delegation API"},
             auth_protocol_id=6, auth_protocol="OAuth 2.0 Token Exchange (RFC 8693)")
    if d.get("jti"):
        e["session"] = _session(d["jti"], None)
        if isinstance(d.get("expires_in"), int):
            e["session"]["expiration_time"] = e["time"] + d["expires_in"] * 1000
    _actor_process(e, r)
    if r.get("delegator"):
        e.setdefault("actor", {})["user"] = {"uid": str(r["delegator"]), "type_id": 1,
                                             "type": "User"}
    return e


# -- 3004 Entity Management ------------------------------------------------------------------

def registry_change(r: Record) -> Event:
    """An agent, role or grant created or changed, by an admin (`uid:N`) or the daemon."""
    d = r.get("details") or {}
    action = str(d.get("action", ""))
    activity_id, activity = _ENTITY_ACTIVITY.get(action, (99, action or "Other"))
    kind = _ENTITY_TYPE.get(str(r.get("type")), "Agent")
    subject = str(r.get("subject", "")) or "(unknown)"
    e = _event(r, 3004, activity_id, activity, f"{kind} {subject}: {action or 'changed'}")
    before, after = d.get("before"), d.get("after")
    e["entity"] = _entity(subject, kind, before if before is not None else after)
    if after is not None:
        e["entity_result"] = _entity(subject, kind, after)
    if r.get("reason"):
        e["comment"] = str(r["reason"])
    e["actor"] = _admin_actor(str(r.get("actor", "")))
    return e


def ca_rotated(r: Record) -> Event:
    d = r.get("details") or {}
    signing = str(d.get("signing", "")) or "(unknown)"
    e = _event(r, 3004, 3, "Update", f"node CA authorities changed; signing key {signing}")
    e["entity"] = {"uid": signing, "name": "node CA", "type": "Certificate Authority",
                   "data": d}
    e["actor"] = _admin_actor("ensign")
    return e


# -- 2004 Detection Finding ------------------------------------------------------------------

def anomaly(r: Record) -> Event:
    d = r.get("details") or {}
    signal = str(d.get("signal", "anomaly"))
    suspended = d.get("action") == "suspend"
    e = _event(r, 2004, 1, "Create", str(r.get("reason", "")) or signal,
               severity_id=4 if suspended else 3)
    e.update(status_id=1, status="New", is_alert=True, finding_info={
        "uid": e["metadata"]["uid"], "title": f"{signal} for {_who(r)}",
        "desc": str(r.get("reason", "")), "types": [signal], "created_time": e["time"],
        "analytic": {"uid": signal, "name": signal, "type_id": 2, "type": "Behavioral"}})
    if r.get("agent_id"):
        e["resources"] = [{"uid": str(r["agent_id"]), "name": str(r.get("spiffe_id", "")
                                                                  or r["agent_id"]),
                           "type": "Workload"}]
    return e


# -- 6003 API Activity ----------------------------------------------------------------------

_API_ACTIVITY = {"create": (1, "Create"), "read": (2, "Read"), "get": (2, "Read"),
                 "list": (2, "Read"), "update": (3, "Update"), "write": (3, "Update"),
                 "put": (3, "Update"), "patch": (3, "Update"), "delete": (4, "Delete"),
                 "post": (1, "Create")}


def action(r: Record) -> Event:
    """An agent acted on a resource with a token: the agent is the actor (with the token as its
    session and the human's consent as its authorization), the reporting service the API's
    service, the resource the one resource; the chain of actors is in the authorization."""
    d = r.get("details") or {}
    operation, resource = str(d.get("action", "")), str(d.get("resource", ""))
    # the verb first ("GET /docs/1", "read document"), else last ("documents.read")
    words = [w for w in re.split(r"[\s./:_-]+", operation.lower()) if w]
    activity_id, activity = next((_API_ACTIVITY[w] for w in words[:1] + words[-1:]
                                  if w in _API_ACTIVITY), (99, "Other"))
    attributed = d.get("attribution") == "issued"
    e = _event(r, 6003, activity_id, activity,
               f"{_who(r) if r.get('agent_id') else 'an unattributed token'} {operation} "
               f"{resource}: {r.get('result', 'success')}",
               severity_id=None if attributed else 3)
    reporter = [str(s) for s in (d.get("reporter") or {}).get("spiffe_ids", [])]
    service: dict[str, Any] = {"name": ", ".join(r.get("audience", [])) or "(unknown)"}
    if reporter:
        service["uid"] = reporter[0]
    e["api"] = {"operation": operation or "(unknown)", "service": service}
    e["resources"] = [{"uid": resource, "name": resource, "type": "Resource"}]
    actor: dict[str, Any] = {"user": _agent_user(r) if r.get("agent_id") else
                             {"name": "unknown", "type_id": 0, "type": "Unknown"}}
    token = d.get("token") or {}
    actor["session"] = _session(token.get("jti") or token.get("sha256"), None)
    if isinstance(token.get("expires_at"), int):
        actor["session"]["expiration_time"] = token["expires_at"] * 1000
    chain = [str(c) for c in d.get("chain", [])]
    if r.get("delegator") or chain:
        consent = f"grant {d['grant']}" if d.get("grant") else str(d.get("consent") or "none")
        hops = [*chain, *([str(r["delegator"])] if r.get("delegator") else [])]
        actor["authorizations"] = [{"decision": f"delegated ({consent})", "policy": {
            "uid": str(d.get("grant") or d.get("consent") or ""), "name": "delegation",
            "desc": " <- ".join(hops),
            "data": {"delegator": r.get("delegator", ""), "chain": chain,
                     "roles": r.get("roles", [])}}}]
    e["actor"] = actor
    e["src_endpoint"] = {"name": str(r.get("spiffe_id") or "unknown")}
    e["dst_endpoint"] = {"svc_name": reporter[0] if reporter else _unix(r)}
    return e


# -- 6002 Application Lifecycle, 0 Base Event ------------------------------------------------

def lifecycle(r: Record) -> Event:
    kind = str(r.get("type"))
    activity_id, activity = {"daemon.start": (3, "Start"), "daemon.stop": (4, "Stop"),
                             "audit.recovered": (99, "Audit Recovered"),
                             "audit.archived": (99, "Audit Archived")}.get(kind, (99, kind))
    e = _event(r, 6002, activity_id, activity, f"Ensign {activity.lower()}")
    e["app"] = dict(PRODUCT)
    return e


def base_event(r: Record) -> Event:
    """Records without a better class: node attestation (tpm) and types unknown here."""
    d = r.get("details") or {}
    name = str(d.get("event") or r.get("type") or "event")
    return _event(r, 0, 99, name, str(r.get("reason", "")) or name)


MAPPERS: dict[str, Callable[[Record], Event]] = {
    "svid.issued": svid_issued, "svid.validated": svid_validated,
    "attestation": attestation, "request.denied": request_denied,
    "token.exchanged": token_exchanged, "action": action,
    "registry.change": registry_change, "role.change": registry_change,
    "grant.change": registry_change, "ca.rotated": ca_rotated,
    "anomaly": anomaly,
    "daemon.start": lifecycle, "daemon.stop": lifecycle, "audit.recovered": lifecycle,
    "audit.archived": lifecycle,
    "tpm": base_event,
}


# -- shared parts ----------------------------------------------------------------------------

def _event(r: Record, class_uid: int, activity_id: int, activity: str, message: str, *,
           severity_id: int | None = None) -> Event:
    """The attributes every class has; the record itself, chain link included, in `unmapped`."""
    class_name, category_uid, category_name = CLASSES[class_uid]
    ok = r.get("result", "success") == "success"
    severity_id = severity_id or (1 if ok else 3)
    seq, chain = r.get("seq"), str(r.get("chain", ""))
    event: Event = {
        "class_uid": class_uid, "class_name": class_name,
        "category_uid": category_uid, "category_name": category_name,
        "activity_id": activity_id, "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id, "type_name": f"{class_name}: {activity}",
        "time": _ms(str(r["time"])), "severity_id": severity_id,
        "severity": _SEVERITY[severity_id],
        "status_id": 1 if ok else 2, "status": "Success" if ok else "Failure",
        "message": message,
        "metadata": {"version": OCSF_VERSION, "product": dict(PRODUCT),
                     "uid": f"{chain}:{seq}", "event_code": str(r.get("type", "")),
                     "log_name": "audit", "log_provider": "ensign",
                     "original_time": str(r["time"])},
        "unmapped": dict(r),
    }
    if isinstance(seq, int):
        event["metadata"]["sequence"] = seq
    if r.get("reason"):
        event["status_detail"] = str(r["reason"])
    return event


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _who(r: Record) -> str:
    return str(r.get("spiffe_id") or r.get("agent_id") or _unix(r))


def _unix(r: Record) -> str:
    p = r.get("process") or {}
    return f"uid {p['uid']} pid {p.get('pid')}" if "uid" in p else "an unknown caller"


def _agent_user(r: Record) -> dict[str, Any]:
    """The agent as the subject: its immutable id, its SPIFFE ID as the name."""
    agent = str(r.get("agent_id", ""))
    if not agent:
        return _unix_user(r)
    return {"uid": agent, "name": str(r.get("spiffe_id", "")) or agent, "type_id": 99,
            "type": "Workload"}


def _unix_user(r: Record) -> dict[str, Any]:
    p = r.get("process") or {}
    if "uid" not in p:
        return {"name": "unknown", "type_id": 0, "type": "Unknown"}
    return {"uid": str(p["uid"]), "type": "Unix account"}


def _process(p: dict[str, Any]) -> dict[str, Any]:
    """OCSF `process.uid` is a process's unique id (a string); the account is `process.user`."""
    out: dict[str, Any] = {"pid": int(p.get("pid", 0))}
    if "uid" in p:
        out["user"] = {"uid": str(p["uid"]), "type": "Unix account"}
    return out


def _actor_process(e: Event, r: Record) -> None:
    if r.get("process"):
        e.setdefault("actor", {})["process"] = _process(r["process"])


def _admin_actor(actor: str) -> dict[str, Any]:
    if actor.startswith("uid:"):
        return {"user": {"uid": actor[4:], "type_id": 2, "type": "Admin"}}
    return {"app_name": actor or "ensign"}


def _entity(uid: str, kind: str, data: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": uid, "type": kind}
    if isinstance(data, dict):
        out["data"] = data
        if data.get("name"):
            out["name"] = str(data["name"])
    return out


def _session(uid: Any, not_after: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": str(uid or ""), "issuer": "ensign"}
    if isinstance(not_after, str):
        out["expiration_time"] = _ms(not_after)
    return out


def _file(path: str, sha256: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": path.rsplit("/", 1)[-1] or path, "path": path, "type_id": 1,
                           "type": "Regular File"}
    if sha256:
        out["hashes"] = [{"algorithm_id": 3, "algorithm": "SHA-256", "value": sha256}]
    return out
