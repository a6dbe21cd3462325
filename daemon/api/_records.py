"""Audit events of the request path (attestation, issuance, refusal), from what it knows. Pure."""

from __future__ import annotations

from typing import Any

from ensign.daemon.audit.event import AuditEvent
from ensign.daemon.audit.records import evidence_digest, process_of
from ensign.daemon.errors import EnsignError
from ensign.daemon.issuing import HolderInactive, JwtSvid, X509Svid
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


def validated(attested: AttestedCaller, claims: dict[str, Any], audience: str,
              validator: tuple[str, ...], err: EnsignError | None = None) -> AuditEvent:
    """ValidateJWTSVID: the token's holder is the agent (whose identity was used), the
    process is the validator's, `validator` its SPIFFE IDs (none: it holds no entry)."""
    aud = claims.get("aud", [])
    return AuditEvent(
        type="svid.validated", result="success" if err is None else "denied",
        reason=err.diagnostics()[:1024] if err else "",
        agent_id=str(claims.get("agent_id", ""))[:128], spiffe_id=str(claims.get("sub", ""))[:2048],
        process=process_of(attested.caller, attested), audience=(audience,),
        details={"jti": str(claims.get("jti", ""))[:128], "validator": list(validator),
                 **({"refused": "agent-inactive" if isinstance(err, HolderInactive)
                     else "audience"} if err is not None else {}),
                 "token_audience": [str(a)[:512] for a in (aud if isinstance(aud, list)
                                                           else [aud])][:32],
                 "expires_at": int(claims["exp"]) if isinstance(claims.get("exp"), int) else 0},
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
