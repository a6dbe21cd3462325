"""SVIDs cached per registry entry, rotated at half life, and the broadcast that wakes streams.

X.509-SVIDs are cached per entry and re-minted at half their lifetime (±10% jitter, so a
thousand streams do not reload at once); JWT-SVIDs per (entry, audience set), reused until half
life. Streams wait on `Broadcast` and recompute their full state whenever anything changed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ensign.daemon import keys
from ensign.daemon.config import SvidConfig
from ensign.daemon.issuing.ca import CertificateAuthority
from ensign.daemon.issuing.jwt_svid import JwtSvid, mint_jwt_svid
from ensign.daemon.issuing.svid import X509Svid, mint_x509_svid
from ensign.daemon.registry import Entry
from ensign.daemon.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

JITTER = 0.10
JWT_CACHE_SIZE = 10_000

Clock = Callable[[], datetime]


class Broadcast:
    """A version counter that wakes every waiter when it moves. Waiters coalesce bursts."""

    def __init__(self) -> None:
        self._version = 0
        self._event = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    def publish(self) -> None:
        self._version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, seen: int) -> int:
        while self._version == seen:
            await self._event.wait()
        return self._version


@dataclass(frozen=True, slots=True)
class _CachedX509:
    svid: X509Svid
    revision: int
    authority_kid: str
    refresh_at: datetime


@dataclass(frozen=True, slots=True)
class _CachedJwt:
    svid: JwtSvid
    refresh_at: datetime


def refresh_time(issued: datetime, expiry: datetime, rng: random.Random) -> datetime:
    """Half life, moved by up to ±10% of the lifetime."""
    life = expiry - issued
    return issued + life * (0.5 + rng.uniform(-JITTER, JITTER))


class SvidCache:
    def __init__(
        self,
        ca: CertificateAuthority,
        config: SvidConfig,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._ca = ca
        self._config = config
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._x509: dict[str, _CachedX509] = {}
        self._jwt: OrderedDict[tuple[str, int, tuple[str, ...]], _CachedJwt] = OrderedDict()
        self._watchers: Counter[str] = Counter()

    # -- X.509 -----------------------------------------------------------------------------

    def x509_for(self, entry: Entry, ttl_cap: timedelta | None = None) -> X509Svid:
        now = self._clock()
        authority = self._ca.current()
        hit = self._x509.get(entry.id)
        if (
            hit is not None
            and hit.revision == entry.revision
            and hit.authority_kid == authority.jwt_kid
            and now < hit.refresh_at
        ):
            return hit.svid
        ttl = timedelta(seconds=entry.x509_ttl) if entry.x509_ttl else self._config.x509_ttl
        if ttl_cap is not None:
            ttl = min(ttl, ttl_cap)
        svid = mint_x509_svid(
            authority=authority.signing(),
            spiffe_id=SpiffeId.parse(entry.spiffe_id),
            key=keys.generate(self._config.key_type),
            ttl=ttl,
            now=now,
            dns_names=entry.dns_names,
        )
        self._x509[entry.id] = _CachedX509(
            svid=svid,
            revision=entry.revision,
            authority_kid=authority.jwt_kid,
            refresh_at=refresh_time(now, svid.not_after, self._rng),
        )
        return svid

    def watch(self, entry_ids: Iterable[str]) -> None:
        self._watchers.update(entry_ids)

    def unwatch(self, entry_ids: Iterable[str]) -> None:
        self._watchers.subtract(entry_ids)
        self._watchers += Counter()  # drop zero counts

    def earliest_x509_expiry(self) -> datetime | None:
        """When the first cached X.509-SVID expires: a stalled rotation shows here first."""
        return min((c.svid.not_after for c in self._x509.values()), default=None)

    def next_refresh_at(self) -> datetime | None:
        times = [c.refresh_at for eid, c in self._x509.items() if self._watchers[eid] > 0]
        return min(times) if times else None

    def expire_due(self) -> bool:
        """Drop X.509-SVIDs past their refresh time; True if a watched one was among them.

        Watched entries are then re-minted by their streams when woken; unwatched ones are
        re-minted lazily on the next fetch.
        """
        now = self._clock()
        due = [eid for eid, c in self._x509.items() if now >= c.refresh_at]
        for eid in due:
            del self._x509[eid]
        return any(self._watchers[eid] > 0 for eid in due)

    # -- JWT -------------------------------------------------------------------------------

    def jwt_for(
        self,
        entry: Entry,
        audience: tuple[str, ...],
        issuer: str | None,
        ttl_cap: timedelta | None = None,
    ) -> JwtSvid:
        now = self._clock()
        key = (entry.id, entry.revision, tuple(sorted(set(audience))))
        hit = self._jwt.get(key)
        if hit is not None and now < hit.refresh_at:
            self._jwt.move_to_end(key)
            return hit.svid
        ttl = timedelta(seconds=entry.jwt_ttl) if entry.jwt_ttl else self._config.jwt_ttl
        if ttl_cap is not None:
            ttl = min(ttl, ttl_cap)
        claims: dict[str, object] = {"agent_id": entry.id}
        if entry.roles:
            claims["roles"] = list(entry.roles)
        svid = mint_jwt_svid(
            authority=self._ca.current().signing(),
            spiffe_id=SpiffeId.parse(entry.spiffe_id),
            audience=key[2],
            ttl=ttl,
            now=now,
            issuer=issuer,
            extra_claims=claims,
        )
        self._jwt[key] = _CachedJwt(svid=svid, refresh_at=now + (svid.expiry - now) / 2)
        if len(self._jwt) > JWT_CACHE_SIZE:
            self._jwt.popitem(last=False)
        return svid

    def sizes(self) -> tuple[int, int]:
        """Cached X.509-SVIDs and JWT-SVIDs (a metric)."""
        return len(self._x509), len(self._jwt)

    # -- invalidation ----------------------------------------------------------------------

    def forget_jwts(self) -> None:
        """After a role changed: audiences and TTL caps may differ now."""
        self._jwt.clear()

    def forget_all(self) -> None:
        """After the signing authority changed: everything is re-minted on next use."""
        self._x509.clear()
        self._jwt.clear()

    def prune(self, live_ids: set[str]) -> None:
        """Drop SVIDs of entries that no longer exist or no longer issue."""
        for eid in [e for e in self._x509 if e not in live_ids]:
            del self._x509[eid]
        for key in [k for k in self._jwt if k[0] not in live_ids]:
            del self._jwt[key]
