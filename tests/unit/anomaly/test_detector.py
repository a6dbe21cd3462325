"""The anomaly detector on an injected clock: nothing during learning, then each signal once per
cooldown, and the learned state survives a save and load."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ensign.daemon.anomaly import Detector, Finding
from ensign.daemon.config import AnomalyConfig

LEARN = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _detector(clock: Clock, **cfg: Any) -> Detector:
    return Detector(AnomalyConfig(learning_period=timedelta(seconds=LEARN), **cfg), clock)


def _issued(agent: str = "agt_a", audience: tuple[str, ...] = ("api",), uid: int = 1000,
            sha: str = "aa" * 32) -> dict[str, Any]:
    return {"type": "svid.issued", "agent_id": agent, "audience": list(audience),
            "process": {"uid": uid, "exe_sha256": sha}}


def _denied(agent: str = "", uid: int = 1000) -> dict[str, Any]:
    return {"type": "request.denied", "result": "denied", "agent_id": agent,
            "process": {"uid": uid}}


def _exchanged(delegator: str, depth: int, agent: str = "agt_a") -> dict[str, Any]:
    return {"type": "token.exchanged", "result": "success", "agent_id": agent,
            "delegator": delegator, "details": {"act": ["x"] * depth}}


def _signals(found: list[Finding]) -> list[str]:
    return [f.signal for f in found]


def _learned(d: Detector, clock: Clock, *events: dict[str, Any]) -> None:
    for e in events:
        assert d.observe(e) == []
    clock.now += LEARN


@pytest.mark.parametrize(("first", "then", "signal", "seen"), [
    (_issued(audience=("api",)), _issued(audience=("billing",)), "new-audience",
     "audience 'billing'"),
    (_issued(uid=1000), _issued(uid=0), "new-uid", "uid 0"),
    (_exchanged("alice", 1), _exchanged("mallory", 1), "new-delegator",
     "acting for 'mallory'"),
    (_exchanged("alice", 1), _exchanged("alice", 3), "chain-depth",
     "a delegation chain 3 deep"),
])
def test_each_novelty_is_flagged_after_learning_only(
    clock: Clock, first: dict[str, Any], then: dict[str, Any], signal: str, seen: str,
) -> None:
    during = _detector(clock)
    assert during.observe(first) == []
    assert during.observe(then) == []  # still learning: it is learned, not flagged
    after = _detector(clock)
    _learned(after, clock, first)
    found = after.observe(then)
    assert _signals(found) == [signal], found
    assert found[0].seen == seen and found[0].agent_id == "agt_a"
    assert found[0].line().startswith(f"{signal} for agt_a: saw {seen}; expected ")
    assert after.observe(then) == []  # learned now: not flagged again


def test_one_finding_per_signal_per_cooldown(clock: Clock) -> None:
    d = _detector(clock, cooldown=timedelta(seconds=30))
    _learned(d, clock, _issued(audience=("api",)))
    assert _signals(d.observe(_issued(audience=("b1",)))) == ["new-audience"]
    clock.now += 10
    assert d.observe(_issued(audience=("b2",))) == []  # within the cooldown
    clock.now += 30
    assert _signals(d.observe(_issued(audience=("b3",)))) == ["new-audience"]


def test_a_surge_over_the_learned_rate_is_flagged_once_per_second(clock: Clock) -> None:
    d = _detector(clock, rate_min=5.0)
    for _ in range(int(LEARN)):  # one request a second while learning
        assert d.observe(_issued()) == []
        clock.now += 1
    found = [f for _ in range(20) for f in d.observe(_issued())]
    assert _signals(found) == ["rate"]
    assert found[0].values["count"] == 6  # the first count over max(rate_min, 5x, mean + 6 sd)
    assert found[0].seen == "6 requests/s for api"
    assert found[0].values["baseline_mean"] == pytest.approx(1.0, abs=0.01)


def test_steady_traffic_is_never_flagged(clock: Clock) -> None:
    d = _detector(clock)
    for _ in range(300):
        for _ in range(8):
            assert d.observe(_issued()) == []
        clock.now += 1


def test_the_hard_ceiling_applies_during_learning(clock: Clock) -> None:
    d = _detector(clock, rate_ceiling=3)
    found = [f for _ in range(10) for f in d.observe(_issued())]
    assert _signals(found) == ["rate"] and found[0].expected == "at most 3/s (hard ceiling)"


def test_denial_bursts_per_uid_and_per_agent(clock: Clock) -> None:
    d = _detector(clock, burst_threshold=5, burst_window=timedelta(seconds=10))
    found = [f for _ in range(4) for f in d.observe(_denied(uid=77))]
    assert found == []
    burst = d.observe(_denied(uid=77))
    assert [(f.signal, f.uid, f.agent_id) for f in burst] == [("denial-burst", 77, "")]
    assert burst[0].seen == "5 refusals in 10s"
    # Spread over more than the window: never a burst.
    calm = _detector(clock, burst_threshold=5, burst_window=timedelta(seconds=10))
    for _ in range(20):
        assert calm.observe(_denied(uid=78)) == []
        clock.now += 3
    # An agent's own refusals (e.g. token exchanges) count for the agent too.
    agent = _detector(clock, burst_threshold=3)
    refused = {"type": "token.exchanged", "result": "denied", "agent_id": "agt_x",
               "process": {"uid": 5}}
    found = [f for _ in range(3) for f in agent.observe(refused)]
    assert [(f.signal, f.agent_id) for f in found] == [("denial-burst", ""),
                                                      ("denial-burst", "agt_x")]


def test_other_events_are_ignored(clock: Clock) -> None:
    d = _detector(clock, burst_threshold=2)
    for kind in ("attestation", "agent.registered", "checkpoint"):
        assert d.observe({"type": kind, "result": "denied", "process": {"uid": 1}}) == []
    assert d.observe({"type": "svid.issued"}) == []  # no agent: nothing to learn about


def test_learned_state_survives_save_and_load(clock: Clock, tmp_path: Path) -> None:
    d = _detector(clock)
    _learned(d, clock, _issued(audience=("api",), uid=1000))
    d.save(tmp_path / "anomaly.json")
    again = _detector(clock)
    again.load(tmp_path / "anomaly.json")
    assert again.observe(_issued(audience=("api",), uid=1000)) == []
    assert _signals(again.observe(_issued(audience=("new",), uid=1000))) == ["new-audience"]
    fresh = _detector(clock)
    fresh.load(tmp_path / "missing.json")  # no file: starts empty, no error
    assert fresh.observe(_issued(audience=("new",))) == []
