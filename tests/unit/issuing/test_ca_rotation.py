"""CA rotation cadence with an injected clock: one new authority per half lifetime, not more."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ensign.daemon.config import CaConfig
from ensign.daemon.issuing import CertificateAuthority


@pytest.mark.parametrize("ttl", [timedelta(seconds=20), timedelta(hours=24)])
def test_one_rotation_per_half_life(tmp_path: Path, ttl: timedelta) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    ca = CertificateAuthority(CaConfig(ttl=ttl), "example.org", tmp_path, clock=lambda: now[0])
    ca.load_or_create()
    signers = [ca.current().jwt_kid]
    step = ttl / 100
    for _ in range(500):  # five lifetimes
        now[0] += step
        ca.maintain()
        kid = ca.current().jwt_kid
        if kid != signers[-1]:
            signers.append(kid)
        # The next authority is published before it signs; expired ones leave the bundle.
        assert 1 <= len(ca.authorities()) <= 3
    # Each authority signs from half its TTL until its successor's half life: the successor was
    # issued (and published) at 40%, so a new key signs every 0.4 TTL.
    assert 11 <= len(signers) <= 14
    # A restart keeps the state: the same authority signs.
    again = CertificateAuthority(CaConfig(ttl=ttl), "example.org", tmp_path,
                                 clock=lambda: now[0])
    again.load_or_create()
    assert again.current().jwt_kid == ca.current().jwt_kid
