"""The trust domain's signing keys across the fleet: each node publishes the public half of its
keys with their validity; every node serves the union of the live ones.

Rows are per `use` and kid, owned by the node that signs with them: "jwt-svid" for JWT-SVID
signing keys (served in the Workload API's JWT bundle, FleetKeys below) and "delegation" for
delegated-token keys (served at `jwks_uri` and verifying chained tokens, through
DelegationKeys.set_others); a key of one use never verifies a token of the other. A key stays in
the table, and in every node's key set, until its `not_after`: a JWT-SVID is never valid past its
signing authority's end (issuing/jwt_svid.py caps `exp` there), and a delegation key's
`not_after` is its `keep_until` (its last token expired), so a key removed from its node
(rotation, a wiped data dir) keeps validating the tokens it signed until none can be valid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon import keys
from ensign.daemon.delegation import DelegationKeys
from ensign.daemon.issuing import CertificateAuthority, jwks

log = logging.getLogger(__name__)

JWT_SVID = "jwt-svid"
DELEGATION = "delegation"
KEYS_CHANNEL = "ensign_keys"


@dataclass(frozen=True, slots=True)
class PublishedKey:
    use: str
    kid: str
    node: str
    key: keys.PublicKey
    not_before: datetime
    not_after: datetime


def to_jwk(key: keys.PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return str(jwt.algorithms.ECAlgorithm.to_jwk(key))
    return str(jwt.algorithms.RSAAlgorithm.to_jwk(key))


def from_jwk(text: str) -> keys.PublicKey:
    data = json.loads(text)
    if data.get("kty") == "EC":
        key: Any = jwt.algorithms.ECAlgorithm.from_jwk(data)
    elif data.get("kty") == "RSA":
        key = jwt.algorithms.RSAAlgorithm.from_jwk(data)
    else:
        raise ValueError(f"unsupported key type {data.get('kty')!r}")
    if not isinstance(key, keys.PublicKey):
        raise ValueError("not a public key")
    return key


def own_keys(ca: CertificateAuthority, node: str) -> list[PublishedKey]:
    """This node's JWT-SVID keys: every authority not yet expired, the prepared next one too."""
    return [PublishedKey(JWT_SVID, a.jwt_kid, node, a.jwt_key.public_key(), a.not_before,
                         a.not_after) for a in ca.authorities()]


def own_delegation_keys(dk: DelegationKeys, node: str) -> list[PublishedKey]:
    """This node's delegated-token keys: the one signing, the next (published ahead) and the
    retired ones whose tokens may still be valid."""
    return [PublishedKey(DELEGATION, k.kid, node, k.key.public_key(), k.active_from,
                         k.keep_until) for k in dk.published()]


def others_of(published: Sequence[PublishedKey], node: str,
              use: str) -> list[tuple[str, keys.PublicKey, datetime]]:
    """The other nodes' keys of one use as (kid, key, not_after)."""
    return [(k.kid, k.key, k.not_after) for k in published if k.node != node and k.use == use]


async def publish(conn: psycopg.AsyncConnection[Any], node: str,
                  published: Sequence[PublishedKey], use: str) -> None:
    """Make the table hold exactly the live keys of this node and use; tell the other nodes."""
    async with conn.transaction():
        for k in published:
            await conn.execute(
                "INSERT INTO node_keys (use, kid, node, jwk, not_before, not_after) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (use, kid) DO UPDATE "
                "SET not_before = excluded.not_before, not_after = excluded.not_after, "
                "published_at = now() WHERE node_keys.node = excluded.node",
                (use, k.kid, node, to_jwk(k.key), k.not_before, k.not_after))
        # A key gone from this node stays until its tokens cannot be valid, then goes.
        await conn.execute("DELETE FROM node_keys WHERE node = %s AND use = %s "
                           "AND not_after <= now()", (node, use))
        await conn.execute("SELECT pg_notify(%s, %s)", (KEYS_CHANNEL, node))


async def load(conn: psycopg.AsyncConnection[Any]) -> list[PublishedKey]:
    cur = await conn.execute("SELECT use, kid, node, jwk, not_before, not_after FROM node_keys "
                             "WHERE not_after > now() ORDER BY node, use, kid")
    out = []
    for use, kid, node, text, nbf, naf in await cur.fetchall():
        try:
            out.append(PublishedKey(use, kid, node, from_jwk(text), nbf, naf))
        except (ValueError, TypeError, KeyError) as e:
            log.warning("ignoring a published key that does not parse",
                        extra={"node": node, "kid": kid, "error": str(e)})
    return out


class FleetKeys:
    """The JWT-SVID keys this node serves: its own (from the CA, always current) and every other
    node's live published ones. Read on the request path: the union is rebuilt only when a side
    changed or a key's time ran out."""

    def __init__(self, ca: CertificateAuthority, node: str,
                 clock: Callable[[], datetime]) -> None:
        self._ca = ca
        self._node = node
        self._clock = clock
        self._remote: list[PublishedKey] = []
        self._union: dict[str, keys.PublicKey] = {}
        self._own_kids: tuple[str, ...] = ()
        self._valid_until: datetime | None = None
        self._jwks: tuple[Mapping[str, keys.PublicKey], bytes] | None = None

    def set_remote(self, published: Sequence[PublishedKey]) -> bool:
        """Take the table's keys (this node's rows are skipped: the CA is the truth for those).
        Returns True when the set of keys served changed."""
        remote = [k for k in published if k.node != self._node and k.use == JWT_SVID]
        changed = {(k.kid, k.not_after) for k in remote} != {
            (k.kid, k.not_after) for k in self._remote}
        self._remote = remote
        if changed:
            self._valid_until = None  # rebuild on next use
        return changed

    def nodes_of(self) -> Mapping[str, str]:
        """kid -> node for the other nodes' keys (status)."""
        return {k.kid: k.node for k in self._remote}

    def jwt_keys(self) -> Mapping[str, keys.PublicKey]:
        own = self._ca.jwt_keys()
        now = self._clock()
        if (tuple(own) != self._own_kids or self._valid_until is None
                or now >= self._valid_until):
            live = [k for k in self._remote if k.not_after > now]
            union: dict[str, keys.PublicKey] = {k.kid: k.key for k in live}
            union.update(own)  # our own kid always means our own key
            self._union, self._own_kids = union, tuple(own)
            self._valid_until = min((k.not_after for k in live), default=datetime.max.replace(
                tzinfo=now.tzinfo))
        return self._union

    def jwks(self) -> bytes:
        union = self.jwt_keys()
        cached = self._jwks
        if cached is None or cached[0] is not union:
            cached = self._jwks = (union, jwks(union))
        return cached[1]
