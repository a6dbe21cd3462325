"""An action as the trail records it: the reporter's words, and Ensign's attribution beside them.

The attribution (agent, SPIFFE ID, delegator, chain, grant, roles, entry, audience, scopes) comes
from Ensign's own issuance record of the token's `jti`, and only when the token verifies against
this trust domain's keys and the record names the very agent the token does. The reporter's
`action`, `resource`, `outcome` and `detail` are kept as it said them (`detail` under
`details.detail`, never merged into the attribution), with the reporter as the kernel and the
registry know it: its process (`process`) and the SPIFFE IDs it holds (`details.reporter`).

In a fleet, a token another node issued verifies against that node's published key and is named
`details.token.node`; its issuance record is in that node's trail, and the attribution comes from
it as shipped to the fleet database (`FleetIssuances`: by that node and jti, waiting briefly for
shipping lag). Only that lookup awaits anything; tokens this node issued are attributed from
memory.

`details.attribution` is "issued" when the token was this trust domain's and valid when reported,
else "unknown" with the reason in `reason`: no token, malformed, forged, another trust domain, no
issuance record here (in a fleet: not in the fleet database (yet), or the database could not be
asked), or expired. An expired token that verifies still names whose it was (the top-level agent
fields), flagged `details.expired`. The clock is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ensign.daemon.actions.detail import Reported
from ensign.daemon.actions.index import Attribution, IssuanceIndex
from ensign.daemon.actions.remote import FleetIssuances, Remote
from ensign.daemon.actions.tokens import Checked, TokenCheck
from ensign.daemon.audit import AuditEvent, process_of
from ensign.daemon.models import AttestedCaller
from ensign.daemon.registry import Entry


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who reported: the attested process and the identities it holds."""

    attested: AttestedCaller
    entries: tuple[Entry, ...]

    def details(self) -> dict[str, Any]:
        return {"spiffe_ids": [e.spiffe_id for e in self.entries],
                "entry_ids": [e.id for e in self.entries]}


class ActionRecorder:
    def __init__(self, *, tokens: TokenCheck, index: IssuanceIndex,
                 clock: Callable[[], datetime], fleet: FleetIssuances | None = None) -> None:
        self._tokens = tokens
        self._index = index
        self._clock = clock
        self._fleet = fleet

    async def event(self, reported: Reported, reporter: Reporter) -> AuditEvent:
        [event] = await self.events([reported], reporter)
        return event

    async def events(self, reported: Sequence[Reported],
                     reporter: Reporter) -> list[AuditEvent]:
        """One event per report, in order. Only tokens another node issued and this node has not
        attributed yet are looked up in the fleet database, all at once (one lookup per token)."""
        checks = [self._tokens.check(r.token) for r in reported]
        hits = [self._index.lookup(c.jti) if c.verified and c.jti else None for c in checks]
        remote: dict[tuple[str, str], Remote] = {}
        if self._fleet is not None:
            wanted = {(c.node, c.jti): c.issued_at for c, hit in zip(checks, hits, strict=True)
                      if hit is None and c.verified and c.jti and c.node}
            if wanted:
                found = await asyncio.gather(*(self._fleet.find(node, jti, at)
                                               for (node, jti), at in wanted.items()))
                remote = dict(zip(wanted, found, strict=True))
        out = []
        for r, c, hit in zip(reported, checks, hits, strict=True):
            far = remote.get((c.node, c.jti))
            if far is not None:
                hit = far.found
            out.append(self._event(r, reporter, c, hit, far.reason if far else ""))
        return out

    def _event(self, reported: Reported, reporter: Reporter, c: Checked,
               hit: tuple[Attribution, int] | None, elsewhere: str) -> AuditEvent:
        now = int(self._clock().timestamp())
        token: dict[str, Any] = {"kind": c.kind}
        if c.fingerprint:
            token["sha256"] = c.fingerprint
        if c.node:
            token["node"] = c.node  # the fleet node that issued it
        details: dict[str, Any] = {"action": reported.action, "resource": reported.resource,
                                   "token": token, "reporter": reporter.details()}
        who: Attribution | None = None
        reason, attribution = c.reason, "unknown"
        if c.verified:
            token.update(jti=c.jti, expires_at=c.expires_at)
            if not c.jti:
                reason = "the token carries no jti: its issuance cannot be looked up"
            elif hit is None and c.node and elsewhere:
                reason = (f"issued by node {c.node} of this trust domain (its key), but its "
                          f"issuance record of jti {c.jti} cannot be read here: {elsewhere}")
            elif hit is None and c.node:
                reason = (f"issued by node {c.node} of this trust domain (its key): the issuance "
                          f"record of jti {c.jti} is in that node's trail, not on this node")
            elif hit is None:
                reason = (f"signed by this trust domain, but this node holds no issuance record "
                          f"of jti {c.jti} (issued by another node, or too long ago)")
            elif hit[0].chain[:1] != (c.subject,):
                reason = f"the issuance record of jti {c.jti} names another agent than the token"
            else:
                who = hit[0]
                if c.expires_at <= now:
                    details["expired"] = True
                    reason = (f"token expired at {_iso(c.expires_at)}, {now - c.expires_at} s "
                              f"before this report; it was issued to {who.agent_id}")
                else:
                    attribution = "issued"
        details["attribution"] = attribution
        if who is not None:
            details["chain"] = list(who.chain)
            details.update({k: v for k, v in (("consent", who.consent), ("grant", who.grant))
                            if v})
        if reported.detail:
            details["detail"] = reported.detail
        return AuditEvent(
            type="action", result=reported.outcome, reason=reason,
            agent_id=who.agent_id if who else "", spiffe_id=who.spiffe_id if who else "",
            entry_id=who.entry_id if who else "", roles=who.roles if who else (),
            delegator=who.delegator if who else "",
            audience=who.audience if who else (), scopes=who.scopes if who else (),
            process=process_of(reporter.attested.caller, reporter.attested), details=details)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
