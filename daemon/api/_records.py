"""Audit events of the request path (attestation, issuance, refusal), from what it knows. Pure."""

from __future__ import annotations

from ensign.daemon.audit.event import AuditEvent
from ensign.daemon.audit.records import evidence_digest, process_of
from ensign.daemon.errors import EnsignError
from ensign.daemon.issuing import JwtSvid, X509Svid
from ensign.daemon.models import AttestedCaller, Caller
from ensign.daemon.registry import Entry


def attestation(attested: AttestedCaller) -> AuditEvent:
    return AuditEvent(
        type="attestation",
        process=process_of(attested.caller, attested),
        details={"selectors": sorted(attested.selectors),
                 "evidence": evidence_digest(attested)},
    )


def x509_issued(attested: AttestedCaller, entry: Entry, svid: X509Svid,
                via: str = "") -> AuditEvent:
    """`via` names an API other than the Workload API that delivered it ("sds")."""
    return AuditEvent(
        type="svid.issued", agent_id=entry.id, spiffe_id=svid.spiffe_id, entry_id=entry.id,
        roles=entry.roles, process=process_of(attested.caller, attested),
        details={"kind": "x509", "serial": format(svid.cert.serial_number, "x"),
                 "not_after": svid.not_after.isoformat(),
                 "ttl": int((svid.not_after - svid.not_before).total_seconds()),
                 **({"via": via} if via else {})},
    )


def jwt_issued(attested: AttestedCaller, entry: Entry, svid: JwtSvid) -> AuditEvent:
    return AuditEvent(
        type="svid.issued", agent_id=entry.id, spiffe_id=svid.spiffe_id, entry_id=entry.id,
        roles=entry.roles, process=process_of(attested.caller, attested),
        audience=svid.audience,
        details={"kind": "jwt", "jti": svid.jti, "not_after": svid.expiry.isoformat(),
                 "ttl": int((svid.expiry - svid.issued_at).total_seconds())},
    )


def denied(method: str, caller: Caller | None, err: EnsignError,
           attested: AttestedCaller | None = None, entry: Entry | None = None,
           audience: tuple[str, ...] = ()) -> AuditEvent:
    return AuditEvent(
        type="request.denied", result="denied", reason=err.diagnostics()[:1024],
        agent_id=entry.id if entry else "", entry_id=entry.id if entry else "",
        process=process_of(caller, attested) if caller else None, audience=audience,
        details={"method": method, "status": err.grpc_status.name,
                 **({"evidence": evidence_digest(attested)} if attested else {})},
    )
