"""The anomaly detector, pure: normal bearer-token reuse raises nothing; misuse is named."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ensign.daemon.anomaly.detector import Detector, Finding
from ensign.daemon.config import AnomalyConfig

# Validators, one service per audience, each under its own uid (replicas of a service share
# it); svc-d's validator holds no registry entry, so its records name no SPIFFE ID.
VALIDATORS = {"svc-a": (["spiffe://example.org/svc/a"], 2001),
              "svc-b": (["spiffe://example.org/svc/b"], 2002),
              "svc-c": (["spiffe://example.org/svc/c"], 2003),
              "svc-d": ([], 2004)}
# Each agent's token names these audiences; a token for two is validated by both services.
AUDIENCES = [("svc-a",), ("svc-b",), ("svc-a", "svc-c"), ("svc-d",)]
JWT_TTL = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Agent:
    """A holder whose client caches its JWT-SVID until half life (±10%), as Ensign's cache and
    go-spiffe's JWTSource do."""

    id: str
    audience: tuple[str, ...]
    uid: int
    sha: str
    jti: str = ""
    refresh_at: float = 0.0
    minted: list[str] = field(default_factory=list)

    def token(self, now: float, rng: random.Random) -> str:
        if not self.jti or now >= self.refresh_at:
            self.jti = f"{self.id}-{len(self.minted)}"
            self.minted.append(self.jti)
            self.refresh_at = now + JWT_TTL / 2 * rng.uniform(0.9, 1.1)
        return self.jti


def issued(a: Agent) -> dict[str, Any]:
    return {"type": "svid.issued", "result": "success", "agent_id": a.id,
            "spiffe_id": f"spiffe://example.org/agent/{a.id}", "audience": list(a.audience),
            "process": {"pid": 4000 + a.uid, "uid": a.uid, "gid": a.uid, "exe_sha256": a.sha},
            "details": {"kind": "jwt", "jti": a.jti}}


def validated(a: Agent, jti: str, audience: str, *, result: str = "success",
              validator: tuple[list[str], int] | None = None) -> dict[str, Any]:
    ids, uid = validator or VALIDATORS[audience]
    return {"type": "svid.validated", "result": result, "agent_id": a.id,
            "spiffe_id": f"spiffe://example.org/agent/{a.id}", "audience": [audience],
            "process": {"pid": 5000 + uid, "uid": uid, "gid": uid},
            "details": {"jti": jti, "validator": ids, "token_audience": list(a.audience)}}


def agents() -> list[Agent]:
    return [Agent(f"agt_{i}", AUDIENCES[i % 4], 1000 + i, f"{i:064x}") for i in range(8)]


def test_ten_thousand_normal_fetch_validate_cycles_raise_nothing() -> None:
    # 8 agents, 10,000 cycles over about 80 simulated minutes (well past the 10-minute
    # learning period): each cycle the agent fetches its JWT-SVID (the cached one until half
    # life) and presents it to every service it names, whose validator checks it. Tokens are
    # validated dozens of times each; nothing of that is an anomaly.
    clock, rng = Clock(), random.Random(17)
    detector = Detector(AnomalyConfig(), clock)
    holders = agents()
    found: list[Finding] = []
    validations = 0
    for cycle in range(10_000):
        clock.now += rng.expovariate(2.0)  # about two cycles a second over all agents
        a = holders[cycle % len(holders)] if cycle % 3 else rng.choice(holders)
        jti = a.token(clock.now, rng)
        found += detector.observe(issued(a))
        for audience in a.audience:
            for _ in range(rng.randint(1, 3)):  # retries and several requests per token
                found += detector.observe(validated(a, jti, audience))
                validations += 1
    assert found == []
    assert clock.now - 1_000_000.0 > 4_000  # spanned many token lifetimes
    assert min(len(a.minted) for a in holders) >= 25  # tokens rotated at half life
    assert validations > 2 * 10_000  # every token was validated many times over


def test_a_token_validated_for_an_audience_it_does_not_name_is_named() -> None:
    clock = Clock()
    detector = Detector(AnomalyConfig(), clock)
    a = agents()[0]  # svc-a only
    jti = a.token(clock.now, random.Random(1))
    assert detector.observe(validated(a, jti, "svc-a")) == []
    found = detector.observe(validated(a, jti, "svc-b", result="denied"))
    assert [(f.signal, f.agent_id, f.may_suspend) for f in found] == [
        ("token-misdirected", a.id, False)]
    assert "'svc-b'" in found[0].line() and "['svc-a']" in found[0].line()


def test_a_token_reaching_more_services_than_it_names_is_named_once() -> None:
    clock = Clock()
    detector = Detector(AnomalyConfig(), clock)
    two = agents()[2]  # names svc-a and svc-c: two validators are normal
    jti = two.token(clock.now, random.Random(1))
    assert detector.observe(validated(two, jti, "svc-a")) == []
    assert detector.observe(validated(two, jti, "svc-c")) == []
    # A third identity accepts it for svc-a: someone who received it replayed it there.
    thief = (["spiffe://example.org/svc/elsewhere"], 3000)
    found = detector.observe(validated(two, jti, "svc-a", validator=thief))
    assert [(f.signal, f.may_suspend) for f in found] == [("token-spread", False)]
    assert found[0].values["validators"] == ["uid:2001", "uid:2003", "uid:3000"]
    clock.now += 3600  # past the cooldown: still one finding per token
    assert detector.observe(validated(two, jti, "svc-a", validator=(["x"], 3001))) == []


def test_a_token_used_after_its_agent_was_suspended_is_named() -> None:
    clock, states = Clock(), {"agt_0": "active"}
    detector = Detector(AnomalyConfig(), clock, lambda agent_id: states[agent_id])
    a = agents()[0]
    jti = a.token(clock.now, random.Random(1))
    assert detector.observe(validated(a, jti, "svc-a")) == []
    states["agt_0"] = "suspended"
    found = detector.observe(validated(a, jti, "svc-a"))
    assert [(f.signal, f.values["state"], f.may_suspend) for f in found] == [
        ("token-inactive-agent", "suspended", False)]


def test_binary_drift_is_flagged_inside_the_learning_period() -> None:
    clock = Clock()
    detector = Detector(AnomalyConfig(), clock)  # learning for 10 minutes
    a = agents()[0]
    a.token(clock.now, random.Random(1))
    assert detector.observe(issued(a)) == []
    clock.now += 5
    assert detector.observe(issued(a)) == []  # the same build again
    a.sha = "f" * 64
    found = detector.observe(issued(a))
    assert [(f.signal, f.may_suspend) for f in found] == [("binary-drift", True)]
    # statistics still wait for the baseline: a first audience after the first is not flagged
    a.audience = ("svc-z",)
    assert detector.observe(issued(a)) == []


def test_a_validator_whose_own_entry_changes_is_still_one_validator() -> None:
    # Its records name its SPIFFE IDs while it holds an entry and none after that entry was
    # suspended; the token has still reached one service only.
    clock = Clock()
    detector = Detector(AnomalyConfig(), clock)
    a = agents()[0]
    jti = a.token(clock.now, random.Random(1))
    assert detector.observe(validated(a, jti, "svc-a")) == []
    assert detector.observe(validated(a, jti, "svc-a", validator=([], 2001))) == []
