"""The SVID cache with an injected clock: reuse until half life (±10% jitter), re-mint on a new
revision or a new signing authority, prune, and expire_due telling whether a watched entry is
due."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ensign.daemon.config import CaConfig, SvidConfig
from ensign.daemon.issuing import CertificateAuthority, SvidCache
from ensign.daemon.issuing.cache import JITTER, refresh_time
from ensign.daemon.registry import Entry

START = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class EdgeRng(random.Random):
    """Jitter always at one end of its range."""

    def __init__(self, end: float) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end < 0 else b


class SwitchableCa:
    """Two real CAs; `current()` is the one selected (a stand-in for a rotation)."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self.cas = []
        for name in ("one", "two"):
            ca = CertificateAuthority(CaConfig(), "example.org", root / name, clock=clock)
            ca.load_or_create()
            self.cas.append(ca)
        self.index = 0

    def current(self):  # type: ignore[no-untyped-def]
        return self.cas[self.index].current()


def _entry(name: str = "a", **kw: object) -> Entry:
    return Entry(id=f"agt_{name}", name=name, kind="agent",
                 spiffe_id=f"spiffe://example.org/agent/{name}", selectors=("unix:uid:0",),
                 **kw)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ca(tmp_path: Path, clock: Clock) -> SwitchableCa:
    return SwitchableCa(tmp_path, clock)


def _cache(ca: SwitchableCa, clock: Clock, end: float = -1) -> SvidCache:
    return SvidCache(ca, SvidConfig(x509_ttl=HOUR), clock, rng=EdgeRng(end))  # type: ignore[arg-type]


def _serial(cache: SvidCache, entry: Entry) -> int:
    return cache.x509_for(entry).cert.serial_number


def test_x509_reused_until_half_life_then_reminted(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock, end=+1)  # refresh at 60% of the lifetime
    a = _entry()
    first = _serial(cache, a)
    clock.now = START + HOUR * 0.59
    assert _serial(cache, a) == first
    clock.now = START + HOUR * 0.60
    assert _serial(cache, a) != first


@pytest.mark.parametrize("end", [-1.0, 1.0])
def test_refresh_time_stays_within_the_jitter_bounds(end: float) -> None:
    issued, expiry = START, START + HOUR
    at = refresh_time(issued, expiry, EdgeRng(end))
    assert at == issued + HOUR * (0.5 + end * JITTER)
    rng = random.Random(7)
    times = [refresh_time(issued, expiry, rng) for _ in range(1000)]
    assert min(times) >= issued + HOUR * 0.4 and max(times) <= issued + HOUR * 0.6
    assert len(set(times)) > 900  # spread, not one instant for every stream


def test_a_new_revision_is_reminted_at_once(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock)
    a = _entry(dns_names=("old.example",))
    first = _serial(cache, a)
    updated = replace(a, revision=2, dns_names=("new.example",))
    svid = cache.x509_for(updated)
    assert svid.cert.serial_number != first
    assert _serial(cache, updated) == svid.cert.serial_number  # then cached again


def test_a_new_signing_authority_is_reminted_at_once(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock)
    a = _entry()
    before = cache.x509_for(a)
    ca.index = 1
    after = cache.x509_for(a)
    assert after.cert.serial_number != before.cert.serial_number
    assert after.cert.issuer == ca.cas[1].current().cert.subject


def test_ttl_cap_and_entry_ttl_shorten_the_svid(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock)
    capped = cache.x509_for(_entry("c"), ttl_cap=timedelta(minutes=10))
    assert capped.not_after - START == timedelta(minutes=10)
    own = cache.x509_for(_entry("o", x509_ttl=120))
    assert own.not_after - START == timedelta(seconds=120)


def test_prune_drops_only_entries_no_longer_live(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock)
    a, b = _entry("a"), _entry("b")
    kept = _serial(cache, a)
    gone = _serial(cache, b)
    cache.jwt_for(a, ("x",), None)
    cache.jwt_for(b, ("x",), None)
    assert cache.sizes() == (2, 2)
    cache.prune({a.id})
    assert cache.sizes() == (1, 1)
    assert _serial(cache, a) == kept
    assert _serial(cache, b) != gone


def test_expire_due_reports_only_watched_entries(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock)
    watched, idle = _entry("w"), _entry("i")
    cache.x509_for(watched)
    cache.x509_for(idle)
    cache.watch([watched.id])
    assert cache.next_refresh_at() == START + HOUR * (0.5 - JITTER)
    assert cache.expire_due() is False  # nothing is due yet
    clock.now = START + HOUR * 0.45
    cache.unwatch([watched.id])
    assert cache.next_refresh_at() is None
    assert cache.expire_due() is False  # both were due and dropped, but nobody watches
    assert cache.sizes() == (0, 0)
    cache.x509_for(watched)
    cache.watch([watched.id, watched.id])  # two streams
    cache.unwatch([watched.id])  # one goes away
    clock.now += HOUR
    assert cache.expire_due() is True
    assert cache.sizes() == (0, 0)


def test_earliest_expiry_names_the_first_to_expire(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock)
    assert cache.earliest_x509_expiry() is None
    cache.x509_for(_entry("long"))
    cache.x509_for(_entry("short"), ttl_cap=timedelta(minutes=5))
    assert cache.earliest_x509_expiry() == START + timedelta(minutes=5)


def test_jwt_reused_per_audience_set_until_half_life(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock)
    a = _entry(roles=("reader",))
    first = cache.jwt_for(a, ("b", "a", "a"), None)
    assert cache.jwt_for(a, ("a", "b"), None).token == first.token  # same set, same token
    assert cache.jwt_for(a, ("a",), None).token != first.token
    clock.now = START + timedelta(minutes=2, seconds=29)  # 5 min TTL: half life at 2.5 min
    assert cache.jwt_for(a, ("a", "b"), None).token == first.token
    clock.now = START + timedelta(minutes=2, seconds=30)
    assert cache.jwt_for(a, ("a", "b"), None).token != first.token


def test_jwt_reminted_after_a_revision_or_forget(ca: SwitchableCa, clock: Clock) -> None:
    cache = _cache(ca, clock)
    a = _entry()
    first = cache.jwt_for(a, ("a",), None)
    assert cache.jwt_for(replace(a, revision=2), ("a",), None).token != first.token
    again = cache.jwt_for(a, ("a",), None)
    cache.forget_jwts()
    assert cache.jwt_for(a, ("a",), None).token != again.token
    x509 = _serial(cache, a)
    cache.forget_all()
    assert cache.sizes() == (0, 0)
    assert _serial(cache, a) != x509
