"""The keys that sign delegated tokens: a key set of their own, never the CA's JWT-SVID keys.

A generic JWKS validator that ignores `typ` would otherwise accept a delegated token (whose `sub`
is a human) as a JWT-SVID, and the Workload API's JWT bundle may hold no keys of other uses
(Workload API §6.2.2). So delegated tokens are signed here, published only at the HTTPS
endpoint's `jwks_uri` (and to the CLI), and JWT-SVID validation never sees these keys.

Each key's `kid` is its RFC 7638 JWK thumbprint: the same key has the same kid after a restart
and on every node that holds it. Rotation publishes the next key half a period before it signs
(so resource servers' cached key sets know it), and keeps a retired key published until the
last token it signed has expired. State is one JSON file under `data_dir/delegation/` (0600 in a
0700 directory), sealed by the TPM like the CA's when `[ca] seal_with_tpm` is set.

In a fleet every node publishes the public half of its keys (fleet/keys.py, use "delegation")
and hands the other nodes' to `set_others`: they verify delegated tokens and are served at
`jwks_uri` beside this node's own, so a token minted on one node verifies and chains on all.
Only this node's own keys sign, and only they are published by it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ensign.daemon import keys
from ensign.daemon.errors import SigningError
from ensign.daemon.files import ensure_private_dir, write_private

log = logging.getLogger(__name__)

Alg = Literal["ES256", "RS256"]
ALGORITHMS: tuple[Alg, ...] = ("ES256", "RS256")
STATE_VERSION = 1
PUBLISH_AHEAD = 0.5  # of the signing period: the next key is published this early
SKEW = timedelta(seconds=60)  # resource servers' clocks may lag


def _utcnow() -> datetime:
    return datetime.now(UTC)


def public_jwk(key: keys.PublicKey) -> dict[str, Any]:
    """The key's public JWK members (kty, crv/x/y or n/e)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return dict(json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key)))
    return dict(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)))


def thumbprint(key: keys.PublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 over the required members, sorted, no whitespace."""
    jwk = public_jwk(key)
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _generate(alg: Alg) -> keys.PrivateKey:
    return keys.generate("ec-p256" if alg == "ES256" else "rsa-2048")


def _alg_of(key: keys.PrivateKey | keys.PublicKey) -> Alg:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.key_size != 256:
            raise ValueError("delegated tokens are signed with P-256 (ES256) or RSA (RS256)")
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size >= 2048:
        return "RS256"
    raise ValueError("unsupported delegation key")


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: keys.PrivateKey
    alg: Alg
    kid: str
    active_from: datetime  # signs from then ...
    retire_at: datetime  # ... until then (the next key takes over)
    keep_until: datetime  # published until then: its last tokens have expired

    @classmethod
    def new(cls, alg: Alg, active_from: datetime, period: timedelta,
            token_ttl: timedelta) -> SigningKey:
        key = _generate(alg)
        retire = active_from + period
        return cls(key=key, alg=alg, kid=thumbprint(key.public_key()),
                   active_from=active_from, retire_at=retire,
                   keep_until=retire + token_ttl + SKEW)

    def jwk(self) -> dict[str, Any]:
        return {**public_jwk(self.key.public_key()), "kid": self.kid, "use": "sig",
                "alg": self.alg}


def _encode(ks: list[SigningKey]) -> bytes:
    return json.dumps({"version": STATE_VERSION, "keys": [
        {"key": keys.to_pem(k.key).decode(), "alg": k.alg,
         "active_from": k.active_from.isoformat(), "retire_at": k.retire_at.isoformat(),
         "keep_until": k.keep_until.isoformat()} for k in ks]}, indent=1).encode()


def _decode(data: bytes) -> list[SigningKey]:
    doc = json.loads(data)
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"unknown delegation key state version {doc.get('version')!r}")
    out = []
    for k in doc["keys"]:
        key = keys.from_pem(k["key"].encode())
        alg = _alg_of(key)
        if alg != k["alg"]:
            raise ValueError(f"key stored as {k['alg']} is a {alg} key")
        out.append(SigningKey(key=key, alg=alg, kid=thumbprint(key.public_key()),
                              active_from=datetime.fromisoformat(k["active_from"]),
                              retire_at=datetime.fromisoformat(k["retire_at"]),
                              keep_until=datetime.fromisoformat(k["keep_until"])))
    return out


@dataclass(frozen=True, slots=True)
class OtherKey:
    """Another fleet node's published delegation key: its public half, until its tokens expire."""

    kid: str
    key: keys.PublicKey
    alg: Alg
    keep_until: datetime

    def jwk(self) -> dict[str, Any]:
        return {**public_jwk(self.key), "kid": self.kid, "use": "sig", "alg": self.alg}


class DelegationKeys:
    """The delegated-token key set of this node (and, in a fleet, the other nodes' public keys).
    Used from the event loop only."""

    def __init__(self, data_dir: Path, *, alg: Alg, period: timedelta, token_ttl: timedelta,
                 clock: Callable[[], datetime] = _utcnow, sealer: Any = None) -> None:
        self._dir = data_dir / "delegation"
        self._path = self._dir / "keys.json"
        self._alg = alg
        self._period = period
        self._ttl = token_ttl
        self._clock = clock
        self._sealer = sealer  # TpmService when [ca] seal_with_tpm
        self._keys: list[SigningKey] = []
        self._others: list[OtherKey] = []

    def load_or_create(self) -> None:
        ensure_private_dir(self._dir)
        if self._path.exists():
            try:
                raw = self._path.read_bytes()
                if self._sealer is not None:
                    raw = self._sealer.unseal(raw)
                self._keys = _decode(raw)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise SigningError(f"cannot load delegation keys {self._path}: {e}") from None
        self.maintain()

    def maintain(self) -> bool:
        """Prune, switch algorithm, prepare the next key. True when the published set changed."""
        now = self._clock()
        before = [k.kid for k in self._keys]
        live = [k for k in self._keys if k.keep_until > now]
        current = self._current(live, now)
        if current is not None and current.alg != self._alg:
            # [delegation] signing_alg changed: the new algorithm signs at once; the old key
            # stops signing now and stays published until its tokens expired.
            log.info("delegation signing algorithm changed", extra={
                "from": current.alg, "to": self._alg})
            live = [replace(k, retire_at=now, keep_until=now + self._ttl + SKEW)
                    if k is current else k for k in live if k.active_from <= now]
            current = None
        if current is None:
            current = SigningKey.new(self._alg, now, self._period, self._ttl)
            live = [k for k in live if k.active_from <= now] + [current]
            log.info("created delegation signing key", extra={"kid": current.kid,
                                                              "alg": current.alg})
        newest = max(live, key=lambda k: k.active_from)
        if newest is current and now >= current.retire_at - self._period * PUBLISH_AHEAD:
            nxt = SigningKey.new(self._alg, current.retire_at, self._period, self._ttl)
            live.append(nxt)
            log.info("published the next delegation signing key", extra={
                "kid": nxt.kid, "signs_from": nxt.active_from.isoformat()})
        self._keys = sorted(live, key=lambda k: k.active_from)
        changed = [k.kid for k in self._keys] != before
        if changed:
            data = _encode(self._keys)
            if self._sealer is not None:
                data = self._sealer.seal(data)
            write_private(self._path, data)
        return changed

    @staticmethod
    def _current(ks: list[SigningKey], now: datetime) -> SigningKey | None:
        active = [k for k in ks if k.active_from <= now < k.retire_at]
        return max(active, key=lambda k: k.active_from) if active else None

    def signing(self) -> SigningKey:
        current = self._current(self._keys, self._clock())
        if current is None:
            raise SigningError("no delegation signing key (maintenance has not run)")
        return current

    def published(self) -> list[SigningKey]:
        """This node's own keys whose tokens may still be valid (or soon signed): what it
        publishes to the fleet."""
        now = self._clock()
        return [k for k in self._keys if k.keep_until > now]

    def set_others(self, others: Iterable[tuple[str, keys.PublicKey, datetime]]) -> bool:
        """The other fleet nodes' published keys (kid, public key, kept until). A key whose kid
        is not its RFC 7638 thumbprint, or of an algorithm delegated tokens do not use, is
        ignored; our own kid always means our own key. True when the set changed."""
        own = {k.kid for k in self._keys}
        taken: list[OtherKey] = []
        for kid, key, keep_until in others:
            try:
                alg = _alg_of(key)
                if thumbprint(key) != kid:
                    raise ValueError("its kid is not its thumbprint")
            except ValueError as e:
                log.warning("ignoring a published delegation key", extra={"kid": kid[:100],
                                                                          "error": str(e)})
                continue
            if kid not in own:
                taken.append(OtherKey(kid, key, alg, keep_until))
        taken.sort(key=lambda k: k.kid)
        changed = [(k.kid, k.keep_until) for k in taken] != [
            (k.kid, k.keep_until) for k in self._others]
        self._others = taken
        return changed

    def _other_live(self) -> list[OtherKey]:
        now = self._clock()
        return [k for k in self._others if k.keep_until > now]

    def verification_keys(self) -> dict[str, keys.PublicKey]:
        """kid -> public key of every key whose tokens may still be valid (or soon signed):
        ours and, in a fleet, the other nodes'."""
        out: dict[str, keys.PublicKey] = {k.kid: k.key for k in self._other_live()}
        out.update((k.kid, k.key.public_key()) for k in self.published())
        return out

    def public_jwks(self) -> dict[str, Any]:
        """The JWK Set for `jwks_uri` and Delegation.TokenKeys: `use: sig`, `alg`, `kid`; ours
        and, in a fleet, the other nodes' (any node's tokens verify against any node's)."""
        return {"keys": [k.jwk() for k in self.published()]
                + [k.jwk() for k in self._other_live()]}

    @property
    def algorithms(self) -> list[str]:
        return sorted({k.alg for k in self.published()} | {k.alg for k in self._other_live()})

    def next_event_at(self) -> datetime:
        now = self._clock()
        times = [t for k in self._keys for t in (k.retire_at, k.keep_until, k.active_from)
                 if t > now]
        current = self._current(self._keys, now)
        if current is not None:
            times.append(current.retire_at - self._period * PUBLISH_AHEAD)
        return min((t for t in times if t > now), default=now + self._period)
