"""Anomaly detection on each agent's own use of its identity. In memory, O(1) per event.

The detector reads the same events the audit trail records, so it sees exactly what was
decided, and it never slows the issuing path beyond a few dictionary updates. Signals:

  rate           requests per second per (agent, audience) above the learned baseline
                 (EWMA mean and variance of per-second counts), or above a hard ceiling;
  new-audience   an audience the agent never used during its learning period;
  binary-drift   an executable hash the agent never ran before (same selectors, other code);
  new-uid        a uid the agent never ran as before;
  denial-burst   many refusals within a window, per agent and per uid;
  new-delegator  a human the agent never acted for before;
  chain-depth    a delegation chain deeper than the agent's usual;
  token-misdirected     a genuine JWT-SVID of the agent validated for an audience it does
                        not name (forwarded, stolen, or a misconfigured validator);
  token-spread          one JWT-SVID validated from more distinct uids than the audiences it
                        names (each audience is one recipient service);
  token-inactive-agent  a JWT-SVID validated after its agent was suspended, decommissioned
                        or deleted.

JWT-SVIDs are bearer tokens that holders reuse until half life (Ensign's cache and go-spiffe's
JWTSource both do), so the same token validated again and again by its audience is normal and
never flagged. The token signals only alert: a token can be misused by whoever received it, so
its holder may be the victim rather than the culprit, and is never suspended for them.

Statistics (rate, first-seen audience, uid, delegator, chain depth) need a baseline: nothing of
those is flagged for an agent until its learning period has passed. Binary drift and the token
signals are discrete facts and are flagged at once. Every finding says in one line what was
seen, what was expected and why it matters.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensign.daemon.config import AnomalyConfig

TOKEN_MEMORY = 100_000  # JWT-SVIDs whose validators are remembered (oldest forgotten first)
EWMA_ALPHA = 0.1
INACTIVE = ("suspended", "decommissioned", "deleted")


@dataclass(frozen=True, slots=True)
class Finding:
    signal: str
    agent_id: str
    seen: str
    expected: str
    why: str
    uid: int | None = None
    values: dict[str, Any] = field(default_factory=dict)
    may_suspend: bool = True  # False: alert only, whatever the action (the holder may be a victim)

    def line(self) -> str:
        who = self.agent_id or f"uid {self.uid}"
        return f"{self.signal} for {who}: saw {self.seen}; expected {self.expected}; {self.why}"


@dataclass
class _Rate:
    second: int = 0
    count: int = 0
    mean: float = 0.0
    var: float = 0.0
    samples: int = 0
    flagged_second: int = -1

    def roll(self, now_s: int) -> None:
        """Fold the finished second(s) into the baseline; idle seconds count as zero."""
        if now_s <= self.second:
            return
        gap = min(now_s - self.second, 600)
        for i in range(gap):
            x = self.count if i == 0 else 0
            delta = x - self.mean
            self.mean += EWMA_ALPHA * delta
            self.var = (1 - EWMA_ALPHA) * (self.var + EWMA_ALPHA * delta * delta)
            self.samples += 1
        self.second, self.count = now_s, 0


@dataclass
class _Agent:
    first_seen: float
    audiences: set[str] = field(default_factory=set)
    exe_hashes: set[str] = field(default_factory=set)
    uids: set[int] = field(default_factory=set)
    delegators: set[str] = field(default_factory=set)
    max_depth: int = 0
    rates: dict[str, _Rate] = field(default_factory=dict)
    denials: deque[float] = field(default_factory=deque)
    last_finding: dict[str, float] = field(default_factory=dict)


@dataclass
class _Token:
    audiences: int
    validators: set[str] = field(default_factory=set)


class Detector:
    def __init__(self, config: AnomalyConfig, clock: Callable[[], float],
                 state_of: Callable[[str], str] = lambda agent_id: "active") -> None:
        """`state_of(agent_id)`: the agent's lifecycle state now ("deleted" if gone)."""
        self._cfg = config
        self._clock = clock
        self._state_of = state_of
        self._agents: dict[str, _Agent] = {}
        self._uid_denials: dict[int, deque[float]] = {}
        self._uid_last: dict[int, float] = {}
        self._tokens: OrderedDict[str, _Token] = OrderedDict()

    # -- input -----------------------------------------------------------------------------

    def observe(self, event: dict[str, Any]) -> list[Finding]:
        """One audit record body (before sealing). Returns the findings it raised."""
        kind = event.get("type")
        if kind == "svid.issued":
            return self._issued(event)
        if kind == "svid.validated":
            return self._validated(event)
        if kind in ("request.denied", "token.exchanged") and event.get("result") == "denied":
            return self._denied(event)
        if kind == "token.exchanged":
            return self._exchanged(event)
        return []

    # -- signals ---------------------------------------------------------------------------

    def _agent(self, agent_id: str, now: float) -> tuple[_Agent, bool]:
        state = self._agents.get(agent_id)
        if state is None:
            state = self._agents[agent_id] = _Agent(first_seen=now)
        learned = now - state.first_seen >= self._cfg.learning_period.total_seconds()
        return state, learned

    def _issued(self, e: dict[str, Any]) -> list[Finding]:
        agent_id = str(e.get("agent_id", ""))
        if not agent_id:
            return []
        now = self._clock()
        st, learned = self._agent(agent_id, now)
        out: list[Finding] = []
        process = e.get("process") or {}
        sha, uid = process.get("exe_sha256", ""), process.get("uid")
        if sha and sha not in st.exe_hashes:
            if st.exe_hashes:  # a fact, not a statistic: flagged in the learning period too
                out.append(Finding(
                    "binary-drift", agent_id, f"executable sha256 {sha[:16]}...",
                    f"one of {len(st.exe_hashes)} known build(s)",
                    "the agent now runs code it never ran before", uid,
                    {"sha256": sha, "known": sorted(st.exe_hashes)}))
            st.exe_hashes.add(sha)
        if isinstance(uid, int) and uid not in st.uids:
            if learned and st.uids:
                out.append(Finding("new-uid", agent_id, f"uid {uid}",
                                   f"uid(s) {sorted(st.uids)}",
                                   "another account now holds this identity", uid))
            st.uids.add(uid)
        for aud in e.get("audience", []) or ["(x509)"]:
            if aud != "(x509)" and aud not in st.audiences:
                if learned and st.audiences:
                    out.append(Finding("new-audience", agent_id, f"audience {aud!r}",
                                       f"one of {len(st.audiences)} known audience(s)",
                                       "the agent reaches a service it never used", uid))
                st.audiences.add(aud)
            out.extend(self._rate(st, agent_id, aud, now, learned, uid))
        return self._cool(st.last_finding, out, now)

    def _rate(self, st: _Agent, agent_id: str, aud: str, now: float, learned: bool,
              uid: Any) -> list[Finding]:
        rate = st.rates.get(aud)
        second = int(now)
        if rate is None:
            rate = st.rates[aud] = _Rate(second=second)
        rate.roll(second)
        rate.count += 1
        cfg = self._cfg
        if cfg.rate_ceiling and rate.count > cfg.rate_ceiling and rate.flagged_second != second:
            rate.flagged_second = second
            return [Finding("rate", agent_id, f"{rate.count} requests/s for {aud}",
                            f"at most {cfg.rate_ceiling}/s (hard ceiling)",
                            "runaway or abused agent", uid, {"count": rate.count})]
        if not learned or rate.samples < 3:
            return []
        limit = max(cfg.rate_min, rate.mean * cfg.rate_factor,
                    rate.mean + cfg.rate_sigma * math.sqrt(max(rate.var, 0.0)))
        if rate.count > limit and rate.flagged_second != second:
            rate.flagged_second = second
            return [Finding("rate", agent_id, f"{rate.count} requests/s for {aud}",
                            f"about {rate.mean:.1f}/s (limit {limit:.1f}/s)",
                            "a sudden surge may be a runaway loop or a stolen identity", uid,
                            {"count": rate.count, "baseline_mean": round(rate.mean, 3),
                             "baseline_std": round(math.sqrt(max(rate.var, 0.0)), 3)})]
        return []

    def _validated(self, e: dict[str, Any]) -> list[Finding]:
        """ValidateJWTSVID: `agent_id` is the token's holder, `process` the validator."""
        agent_id = str(e.get("agent_id", ""))
        details = e.get("details") or {}
        jti = str(details.get("jti", ""))
        if not agent_id or not jti:
            return []
        now = self._clock()
        st, _ = self._agent(agent_id, now)
        named = [str(a) for a in details.get("token_audience", [])]
        asked = ", ".join(repr(a) for a in e.get("audience", []))
        uid = (e.get("process") or {}).get("uid")
        if e.get("result") != "success" and details.get("refused") == "agent-inactive":
            state = self._state_of(agent_id) or "suspended"
            return self._cool(st.last_finding, [Finding(
                "token-inactive-agent", agent_id, f"its JWT-SVID {jti} presented for {asked}",
                f"no use of a {state} agent's identity", "its tokens outlive the suspension: "
                "whoever holds them still uses them (this node refused it)", uid,
                {"jti": jti, "state": state}, may_suspend=False)], now)
        if e.get("result") != "success":
            return self._cool(st.last_finding, [Finding(
                "token-misdirected", agent_id, f"its JWT-SVID {jti} presented for {asked}",
                f"only for {named}", "a token sent to a service it does not name was forwarded "
                "or stolen, or that validator is misconfigured", uid,
                {"jti": jti, "token_audience": named}, may_suspend=False)], now)
        out: list[Finding] = []
        state = self._state_of(agent_id)
        if state in INACTIVE:
            out.append(Finding(
                "token-inactive-agent", agent_id, f"its JWT-SVID {jti} validated for {asked}",
                f"no use of a {state} agent's identity", "its tokens outlive the suspension: "
                "whoever holds them still uses them", uid, {"jti": jti, "state": state},
                may_suspend=False))
        # A validator is told apart by the uid it runs as: a kernel fact that registry changes
        # (its entries updated or suspended mid-token) cannot split into two.
        validator = f"uid:{uid}"
        token = self._tokens.get(jti)
        if token is None:
            token = self._tokens[jti] = _Token(audiences=max(1, len(named)))
            if len(self._tokens) > TOKEN_MEMORY:
                self._tokens.popitem(last=False)
        if validator not in token.validators:
            token.validators.add(validator)
            if len(token.validators) == token.audiences + 1:  # once per token
                out.append(Finding(
                    "token-spread", agent_id,
                    f"its JWT-SVID {jti} validated by {len(token.validators)} services "
                    f"({', '.join(sorted(token.validators))})",
                    f"at most {token.audiences} (one per audience it names: {named})",
                    "a token that reaches services beyond its audiences was replayed by someone "
                    "who received it", uid,
                    {"jti": jti, "validators": sorted(token.validators)}, may_suspend=False))
        return self._cool(st.last_finding, out, now)

    def _denied(self, e: dict[str, Any]) -> list[Finding]:
        now = self._clock()
        window = self._cfg.burst_window.total_seconds()
        out: list[Finding] = []
        uid = (e.get("process") or {}).get("uid")
        agent_id = str(e.get("agent_id", ""))
        if isinstance(uid, int):
            times = self._uid_denials.setdefault(uid, deque())
            if self._burst(times, now, window):
                last = self._uid_last.get(uid, -math.inf)
                if now - last >= self._cfg.cooldown.total_seconds():
                    self._uid_last[uid] = now
                    out.append(self._burst_finding("", uid, len(times)))
        if agent_id:
            st, _ = self._agent(agent_id, now)
            if self._burst(st.denials, now, window):
                out.extend(self._cool(st.last_finding,
                                      [self._burst_finding(agent_id, uid, len(st.denials))], now))
        return out

    def _burst(self, times: deque[float], now: float, window: float) -> bool:
        times.append(now)
        while times and times[0] < now - window:
            times.popleft()
        return len(times) >= self._cfg.burst_threshold

    def _burst_finding(self, agent_id: str, uid: Any, n: int) -> Finding:
        window = self._cfg.burst_window.total_seconds()
        return Finding("denial-burst", agent_id, f"{n} refusals in {window:g}s",
                       f"fewer than {self._cfg.burst_threshold}",
                       "probing for identities or a broken deployment", uid, {"count": n})

    def _exchanged(self, e: dict[str, Any]) -> list[Finding]:
        agent_id = str(e.get("agent_id", ""))
        if not agent_id:
            return []
        now = self._clock()
        st, learned = self._agent(agent_id, now)
        out: list[Finding] = []
        delegator = str(e.get("delegator", ""))
        if delegator and delegator not in st.delegators:
            if learned and st.delegators:
                out.append(Finding("new-delegator", agent_id, f"acting for {delegator!r}",
                                   f"one of {len(st.delegators)} known delegator(s)",
                                   "the agent acts for someone it never served"))
            st.delegators.add(delegator)
        depth = len((e.get("details") or {}).get("act", []))
        if depth > st.max_depth:
            if learned and st.max_depth:
                out.append(Finding("chain-depth", agent_id, f"a delegation chain {depth} deep",
                                   f"at most {st.max_depth}",
                                   "longer chains blur who is accountable"))
            st.max_depth = depth
        return self._cool(st.last_finding, out, now)

    def _cool(self, last: dict[str, float], found: list[Finding], now: float) -> list[Finding]:
        """At most one finding per signal per agent per cooldown (rate findings excepted)."""
        out = []
        for f in found:
            if f.signal != "rate" and now - last.get(f.signal, -math.inf) \
                    < self._cfg.cooldown.total_seconds():
                continue
            last[f.signal] = now
            out.append(f)
        return out

    # -- persistence -----------------------------------------------------------------------

    def save(self, path: Path) -> None:
        doc = {aid: {"first_seen": s.first_seen, "audiences": sorted(s.audiences),
                     "exe_hashes": sorted(s.exe_hashes), "uids": sorted(s.uids),
                     "delegators": sorted(s.delegators), "max_depth": s.max_depth,
                     "rates": {a: [r.mean, r.var, r.samples] for a, r in s.rates.items()}}
               for aid, s in self._agents.items()}
        from ensign.daemon.files import write_private

        write_private(path, json.dumps({"version": 1, "agents": doc}).encode())

    def load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return
        for aid, s in doc.get("agents", {}).items():
            st = _Agent(first_seen=float(s["first_seen"]), audiences=set(s["audiences"]),
                        exe_hashes=set(s["exe_hashes"]), uids=set(s["uids"]),
                        delegators=set(s["delegators"]), max_depth=int(s["max_depth"]))
            for aud, (mean, var, samples) in s.get("rates", {}).items():
                st.rates[aud] = _Rate(second=int(self._clock()), mean=mean, var=var,
                                      samples=samples)
            self._agents[aid] = st
