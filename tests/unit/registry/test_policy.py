"""Role policy rules, checked against the rule as the docs state it."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from ensign.daemon.registry import AudienceDenied, Role, jwt_ttl_cap


def _reference_jwt_ttl_cap(agent_roles: tuple[str, ...], roles: dict[str, Role],
                           audiences: tuple[str, ...]) -> timedelta | None:
    """The rule as the docs state it, spelled out plainly (default_allow=False)."""
    held = [roles[r] for r in agent_roles if r in roles]
    if not held:
        raise AudienceDenied("no roles")
    cap: int | None = None
    for audience in audiences:
        caps = [r.max_ttl for r in held if r.allows(audience)]
        if not caps:
            raise AudienceDenied(audience)
        if 0 not in caps:
            cap = max(caps) if cap is None else min(cap, max(caps))
    return None if cap is None else timedelta(seconds=cap)


_AUD = st.sampled_from(["a", "ab", "b", "api.x", "api.*", "c"])


@given(
    roles=st.dictionaries(
        st.sampled_from(["r1", "r2", "r3"]),
        st.tuples(st.lists(st.sampled_from(["a", "ab", "a*", "api.*", "b", "*"]), min_size=1,
                           max_size=3), st.sampled_from([0, 60, 300, 3600])),
        max_size=3),
    held=st.lists(st.sampled_from(["r1", "r2", "r3", "gone"]), max_size=3),
    audiences=st.lists(_AUD, min_size=1, max_size=3),
)
def test_jwt_ttl_cap_follows_the_rule(roles: dict[str, tuple[list[str], int]], held: list[str],
                                      audiences: list[str]) -> None:
    book = {n: Role(name=n, audiences=tuple(a), max_ttl=t) for n, (a, t) in roles.items()}
    args = (tuple(held), book, tuple(audiences))
    try:
        expected: timedelta | type[AudienceDenied] | None = _reference_jwt_ttl_cap(*args)
    except AudienceDenied:
        expected = AudienceDenied
    try:
        got: timedelta | type[AudienceDenied] | None = jwt_ttl_cap(*args, default_allow=False)
    except AudienceDenied:
        got = AudienceDenied
    assert got == expected
