"""The exchange rules (`delegation.decide`), pure: consent, chains, scopes, lifetimes, refusals."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ensign.daemon.delegation import (
    DelegatedToken,
    DelegationDenied,
    Delegator,
    Request,
    decide,
)
from ensign.daemon.delegation.rules import Decision
from ensign.daemon.registry import Entry, Grant, Role

NOW = datetime(2026, 1, 1, tzinfo=UTC)
T = int(NOW.timestamp())
CAL = "https://calendar.example.org"
ISSUER = "spiffe://example.org"


def _agent(name: str, *roles: str, state: str = "active") -> Entry:
    return Entry(id=f"agt_{name}", name=name, kind="agent",
                 spiffe_id=f"spiffe://example.org/agent/{name}", selectors=("unix:uid:0",),
                 roles=roles, state=state)


ROLES = {
    "planner": Role(name="planner", audiences=(f"{CAL}*",),
                    scopes=("calendar.read", "calendar.write"), max_ttl=600,
                    may_act_for_users=True, may_redelegate=True),
    "reader": Role(name="reader", audiences=(f"{CAL}*",), scopes=("calendar.read",),
                   max_ttl=0, may_act_for_users=True),
    "plain": Role(name="plain", audiences=("*",), scopes=("calendar.read",)),
}
A = _agent("a", "planner")
B = _agent("b", "reader")
C = _agent("c", "reader")


def _human(may_act: Any = None, scopes: tuple[str, ...] = ("calendar.read", "calendar.write"),
           expires_at: int = T + 3600) -> Delegator:
    return Delegator(subject="alice", issuer="https://idp.example.org", scopes=scopes,
                     expires_at=expires_at, may_act=may_act)


def _request(*scopes: str, audience: str = f"{CAL}/v1", ttl: timedelta | None = None,
             narrowing: bool = False) -> Request:
    return Request(audience=audience, scopes=scopes, ttl=ttl, allow_narrowing=narrowing)


def _decide(agent: Entry = A, delegator: Delegator | None = None,
            request: Request | None = None, grant: Grant | None = None,
            max_ttl: timedelta = timedelta(hours=1), depth: int = 2,
            lookup: dict[str, Entry] | None = None) -> Decision:
    return decide(agent=agent, roles=ROLES,
                  delegator=delegator or _human(may_act={"sub": agent.spiffe_id}),
                  grant=grant, request=request or _request("calendar.read"), issuer=ISSUER,
                  cnf_thumbprint="thumb", max_ttl=max_ttl, max_chain_depth=depth, now=NOW,
                  registry_lookup=lookup if lookup is not None else {e.id: e for e in (A, B, C)})


def _denied(match: str, **kw: Any) -> None:
    with pytest.raises(DelegationDenied, match=match):
        _decide(**kw)


def _chain(first: Decision, actor: Entry) -> Delegator:
    """The delegator established from `first`'s token, presented by the next agent."""
    prev = DelegatedToken(subject="alice", actors=first.actors, scopes=first.scopes,
                          audience=(first.claims["aud"],), expires_at=first.claims["exp"],
                          claims=first.claims)
    assert prev.actors[0] == actor.spiffe_id
    return Delegator(subject="alice", issuer="https://idp.example.org", scopes=first.scopes,
                     expires_at=first.claims["exp"], previous=prev)


# -- consent ------------------------------------------------------------------------------------

@pytest.mark.parametrize("may_act", [
    {"sub": A.spiffe_id}, {"sub": A.id, "iss": ISSUER}, [{"sub": "someone"}, {"sub": A.spiffe_id}],
    {"sub": A.spiffe_id, "iss": ISSUER},
], ids=["spiffe-id", "agent-id-with-our-iss", "in-a-list", "spiffe-id-with-our-iss"])
def test_may_act_naming_the_agent_is_consent(may_act: Any) -> None:
    d = _decide(delegator=_human(may_act=may_act))
    assert d.claims["dlg"] == {"roles": ["planner"], "may_act": True}
    assert d.claims["sub"] == "alice" and d.claims["act"]["sub"] == A.spiffe_id
    assert d.actors == (A.spiffe_id,) and d.grant_id == ""


@pytest.mark.parametrize("may_act", [
    None, {"sub": B.spiffe_id}, "agt_a", [A.spiffe_id], {}, {"sub": A.id},
    {"sub": A.spiffe_id, "iss": "https://elsewhere.example.org"},
], ids=["absent", "another-agent", "a-string", "bare-list", "empty", "bare-agent-id-no-iss",
        "our-spiffe-id-under-another-iss"])
def test_no_consent_without_may_act_naming_the_agent_or_a_grant(may_act: Any) -> None:
    _denied("alice has not allowed agent agt_a to act for them",
            delegator=_human(may_act=may_act))


def test_a_grant_is_consent_and_limits_scopes_to_the_grant() -> None:
    grant = Grant(id="grt_1", subject="alice", issuer="https://idp.example.org", agent_id=A.id,
                  scopes=("calendar.read",))
    d = _decide(delegator=_human(), grant=grant, request=_request())
    assert d.grant_id == "grt_1" and d.claims["dlg"]["grant"] == "grt_1"
    assert d.scopes == ("calendar.read",)  # the token held write too; the grant did not
    _denied("calendar.write not allowed", delegator=_human(), grant=grant,
            request=_request("calendar.write"))


def test_a_grant_with_a_scopeless_token_grants_the_grants_scopes() -> None:
    grant = Grant(id="grt_2", subject="alice", issuer="i", agent_id=A.id,
                  scopes=("calendar.read", "calendar.write"))
    d = _decide(delegator=_human(scopes=()), grant=grant, request=_request())
    assert d.scopes == ("calendar.read", "calendar.write")


def test_may_act_wins_over_a_grant() -> None:
    grant = Grant(id="grt_3", subject="alice", issuer="i", agent_id=A.id,
                  scopes=("calendar.read",))
    d = _decide(grant=grant)
    assert d.grant_id == "" and "grant" not in d.claims["dlg"]


def test_an_agent_without_a_role_that_may_act_for_users_is_refused() -> None:
    plain = _agent("p", "plain", "unknown-role")
    _denied("agent agt_p holds no role that may act for users", agent=plain,
            delegator=_human(may_act={"sub": plain.spiffe_id}))


# -- audience and scopes ------------------------------------------------------------------------

def test_audience_must_be_allowed_by_an_acting_role() -> None:
    _denied("audience 'https://mail.example.org' is not allowed by the agent's roles "
            r"\(planner\)", request=_request("calendar.read", audience="https://mail.example.org"))


@pytest.mark.parametrize(("asked", "token", "granted"), [
    ((), ("calendar.read", "calendar.write"), ("calendar.read", "calendar.write")),
    (("calendar.read",), ("calendar.read", "calendar.write"), ("calendar.read",)),
    ((), ("calendar.read", "mail.send"), ("calendar.read",)),  # the role has no mail.send
])
def test_granted_scopes_are_requested_and_delegators_and_roles(
    asked: tuple[str, ...], token: tuple[str, ...], granted: tuple[str, ...],
) -> None:
    d = _decide(delegator=_human(may_act={"sub": A.spiffe_id}, scopes=token),
                request=_request(*asked))
    assert d.scopes == granted and d.claims["scope"] == " ".join(granted)


def test_asking_for_more_is_refused_not_narrowed() -> None:
    _denied(r"scope\(s\) calendar.admin, calendar.write not allowed",
            delegator=_human(may_act={"sub": A.spiffe_id}, scopes=("calendar.read",)),
            request=_request("calendar.read", "calendar.write", "calendar.admin"))


def test_narrowing_when_the_request_allows_it() -> None:
    d = _decide(delegator=_human(may_act={"sub": A.spiffe_id}, scopes=("calendar.read",)),
                request=_request("calendar.read", "calendar.write", narrowing=True))
    assert d.scopes == ("calendar.read",)


def test_nothing_left_to_grant_is_refused_even_with_narrowing() -> None:
    _denied("no scope left to grant",
            delegator=_human(may_act={"sub": A.spiffe_id}, scopes=("mail.send",)),
            request=_request("mail.send", narrowing=True))


# -- lifetime -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("max_ttl", "asked", "token_left", "expect"), [
    (timedelta(hours=1), None, 3600, 600),  # the planner role caps at 600 s
    (timedelta(seconds=120), None, 3600, 120),  # the daemon's cap
    (timedelta(hours=1), timedelta(seconds=30), 3600, 30),  # the request
    (timedelta(hours=1), None, 90, 90),  # never past the delegator's token
])
def test_lifetime_is_the_smallest_cap(max_ttl: timedelta, asked: timedelta | None,
                                      token_left: int, expect: int) -> None:
    d = _decide(delegator=_human(may_act={"sub": A.spiffe_id}, expires_at=T + token_left),
                request=_request("calendar.read", ttl=asked), max_ttl=max_ttl)
    assert d.expires_in == expect
    assert (d.claims["iat"], d.claims["exp"]) == (T, T + expect)


def test_a_role_without_a_cap_leaves_the_daemons() -> None:
    d = _decide(agent=B, delegator=_human(may_act={"sub": B.spiffe_id}),
                max_ttl=timedelta(seconds=900))
    assert d.expires_in == 900


def test_a_token_expiring_now_is_refused() -> None:
    _denied("expires too soon", delegator=_human(may_act={"sub": A.spiffe_id}, expires_at=T))


def test_claims_carry_the_binding_and_the_issuer() -> None:
    d = _decide()
    assert d.claims["cnf"] == {"x5t#S256": "thumb"}
    assert (d.claims["iss"], d.claims["aud"], d.claims["client_id"]) == (ISSUER, f"{CAL}/v1",
                                                                       A.id)
    assert d.claims["sub_iss"] == "https://idp.example.org"
    assert d.claims["act"] == {"sub": A.spiffe_id, "agent_id": A.id, "iss": ISSUER,
                               "sub_profile": "ai_agent"}


# -- chains -------------------------------------------------------------------------------------

def test_a_chain_nests_the_previous_actor_and_keeps_the_first_consent() -> None:
    first = _decide(request=_request("calendar.read", "calendar.write"))
    second = _decide(agent=B, delegator=_chain(first, A), request=_request("calendar.read"))
    assert second.actors == (B.spiffe_id, A.spiffe_id)
    assert second.claims["act"]["sub"] == B.spiffe_id
    assert second.claims["act"]["act"] == first.claims["act"]
    assert second.claims["dlg"] == {"roles": ["reader"], "may_act": True}
    assert second.scopes == ("calendar.read",)


def test_a_chain_cannot_widen_the_previous_scopes() -> None:
    first = _decide(request=_request("calendar.read"))
    _denied("calendar.write not allowed", agent=_agent("a2", "planner"),
            delegator=_chain(first, A), request=_request("calendar.write"),
            lookup={A.id: A})


def test_a_chain_is_limited_in_depth() -> None:
    first = _decide(request=_request("calendar.read"))
    deep = _chain(first, A)
    assert deep.previous is not None
    deep = replace(deep, previous=replace(deep.previous, actors=(A.spiffe_id, "x", "y")))
    _denied("delegation chain would be 4 deep; the limit is 3", agent=B, delegator=deep,
            depth=3)


def test_a_chain_is_refused_when_the_actor_may_not_redelegate() -> None:
    first = _decide(agent=B, delegator=_human(may_act={"sub": B.spiffe_id}))
    _denied("agent agt_b may not re-delegate", agent=C, delegator=_chain(first, B))


def test_an_agent_cannot_redelegate_to_itself() -> None:
    first = _decide()
    _denied("an agent cannot re-delegate to itself", agent=A, delegator=_chain(first, A))


@pytest.mark.parametrize("state", ["suspended", "decommissioned"])
def test_a_chain_from_an_inactive_agent_is_refused(state: str) -> None:
    first = _decide()
    _denied(f"the delegating agent agt_a is {state}", agent=B, delegator=_chain(first, A),
            lookup={A.id: replace(A, state=state), B.id: B})


def test_a_chain_from_an_unknown_or_renamed_actor_is_refused() -> None:
    first = _decide()
    _denied("actor is not a registered agent", agent=B, delegator=_chain(first, A),
            lookup={B.id: B})
    moved = replace(A, spiffe_id="spiffe://example.org/agent/other")
    _denied("actor is not a registered agent", agent=B, delegator=_chain(first, A),
            lookup={A.id: moved, B.id: B})


def test_a_chain_cannot_move_to_another_audience() -> None:
    first = _decide()
    _denied("is wider than the subject token's", agent=B, delegator=_chain(first, A),
            request=_request("calendar.read", audience=f"{CAL}/other"))
