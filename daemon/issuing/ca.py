"""The node's certificate authority for one trust domain: keys, rotation, bundle and JWKS.

State is a list of authorities (CA generations), persisted as one JSON file under
`data_dir/ca/` (0600 in a 0700 directory). The next authority is prepared at 40% of the current
one's lifetime and published in the bundles at once, then signs from half-life on; older
authorities stay in the bundles until they expire, so SVIDs they signed keep verifying.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from ensign.daemon import keys
from ensign.daemon.config import CaConfig
from ensign.daemon.errors import ConfigError, SigningError
from ensign.daemon.files import ensure_private_dir, write_private
from ensign.daemon.issuing.ca_offline import load_external
from ensign.daemon.issuing.jwt_svid import jwks
from ensign.daemon.issuing.svid import SigningAuthority
from ensign.daemon.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

STATE_VERSION = 1
PREPARE_AT = 0.4  # of the lifetime: publish the next authority before it signs anything
ACTIVATE_AT = 0.5  # of the lifetime: rotation at half life
BACKDATE = timedelta(seconds=60)  # for peers with slow clocks; at most 5% of a short TTL

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Authority:
    cert: x509.Certificate
    key: keys.PrivateKey
    jwt_key: keys.PrivateKey
    jwt_kid: str
    active_from: datetime

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.cert.not_valid_before_utc

    @property
    def self_signed(self) -> bool:
        return self.cert.issuer == self.cert.subject

    def signing(self) -> SigningAuthority:
        # Under an upstream CA the node CA is an intermediate: SVIDs carry it after the leaf.
        chain = () if self.self_signed else (self.cert,)
        return SigningAuthority(
            cert=self.cert, key=self.key, chain=chain, jwt_key=self.jwt_key, jwt_kid=self.jwt_kid
        )


@dataclass(frozen=True, slots=True)
class Upstream:
    """An organisation CA (or an intermediate of an existing PKI) that signs node CAs."""

    cert: x509.Certificate
    key: keys.PrivateKey

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Upstream:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = keys.from_pem(key_path.read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the upstream CA ({cert_path}, {key_path}): {e}") \
                from None
        spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise ConfigError(f"{key_path} is not the key of {cert_path}")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise ConfigError(f"{cert_path} is not a CA certificate (BasicConstraints CA=true)")
        return cls(cert=cert, key=key)


def new_authority(
    trust_domain: str, key_type: keys.KeyType, ttl: timedelta, now: datetime,
    active_from: datetime | None = None, upstream: Upstream | None = None,
) -> Authority:
    key = keys.generate(key_type)
    public = key.public_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ensign"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Ensign CA {trust_domain}"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
    ])
    not_after = now + ttl
    if upstream is not None:
        not_after = min(not_after, upstream.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(upstream.cert.subject if upstream else name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - min(BACKDATE, ttl / 20))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0 if upstream else None),
                       critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(SpiffeId.for_trust_domain(trust_domain)))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if upstream is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(upstream.key.public_key()),
            critical=False)
        cert = builder.sign(upstream.key, keys.signature_hash(upstream.key))
    else:
        cert = builder.sign(key, keys.signature_hash(key))
    return Authority(
        cert=cert,
        key=key,
        jwt_key=keys.generate(key_type),
        jwt_kid=base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("="),
        active_from=active_from or now,
    )


def _schedule(a: Authority) -> tuple[datetime, timedelta]:
    """When an authority was issued and its TTL, undoing the notBefore backdating, so that
    rotation follows the configured TTL however short it is."""
    span = a.not_after - a.not_before  # ttl + min(BACKDATE, ttl / 20)
    backdate = min(BACKDATE, span / 21)
    return a.not_before + backdate, span - backdate


def _encode(authorities: list[Authority]) -> bytes:
    return json.dumps({
        "version": STATE_VERSION,
        "authorities": [
            {
                "cert": a.cert.public_bytes(Encoding.PEM).decode(),
                "key": keys.to_pem(a.key).decode(),
                "jwt_key": keys.to_pem(a.jwt_key).decode(),
                "jwt_kid": a.jwt_kid,
                "active_from": a.active_from.isoformat(),
            }
            for a in authorities
        ],
    }, indent=1).encode()


def _decode(data: bytes) -> list[Authority]:
    doc = json.loads(data)
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"unknown CA state version {doc.get('version')!r}")
    return [
        Authority(
            cert=x509.load_pem_x509_certificate(a["cert"].encode()),
            key=keys.from_pem(a["key"].encode()),
            jwt_key=keys.from_pem(a["jwt_key"].encode()),
            jwt_kid=a["jwt_kid"],
            active_from=datetime.fromisoformat(a["active_from"]),
        )
        for a in doc["authorities"]
    ]


class CertificateAuthority:
    """Owns the authorities of one trust domain. Not thread-safe: used from the event loop."""

    def __init__(
        self, config: CaConfig, trust_domain: str, data_dir: Path, clock: Clock = utcnow,
        sealer: Any = None,
    ) -> None:
        self._sealer = sealer  # TpmService when [ca] seal_with_tpm: seal(bytes)/unseal(bytes)
        self._config = config
        self._td = trust_domain
        self._dir = data_dir / "ca"
        self._path = self._dir / "state.json"
        self._clock = clock
        self._authorities: list[Authority] = []
        self._bundle_der: tuple[tuple[x509.Certificate, ...], bytes] | None = None
        self._signing_kid: str | None = None
        self._upstream: Upstream | None = None
        self._fixed: Authority | None = None  # an offline-signed node CA (ca install-signed)
        self._fixed_root: x509.Certificate | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def load_or_create(self) -> None:
        if self._config.upstream_cert is not None and self._config.upstream_key is not None:
            self._upstream = Upstream.load(self._config.upstream_cert, self._config.upstream_key)
        ensure_private_dir(self._dir)
        external = load_external(self._dir.parent)
        if external is not None:
            cert, key, jwt_key, kid, root = external
            self._fixed = Authority(cert=cert, key=key, jwt_key=jwt_key, jwt_kid=kid,
                                    active_from=cert.not_valid_before_utc)
            self._fixed_root = root
            log.info("using the offline-signed node CA", extra={
                "not_after": cert.not_valid_after_utc.isoformat()})
        if self._path.exists() and self._fixed is None:
            try:
                raw = self._path.read_bytes()
                if self._sealer is not None:
                    raw = self._sealer.unseal(raw)  # TpmSealError (a SigningError) on mismatch
                self._authorities = _decode(raw)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise SigningError(f"cannot load CA state {self._path}: {e}") from None
            log.info("loaded CA state", extra={"authorities": len(self._authorities)})
        self.maintain()

    def maintain(self) -> bool:
        """Prune expired authorities, prepare and activate the next. Return True if changed."""
        now = self._clock()
        if self._fixed is not None:  # signed offline: nothing to rotate here
            self._authorities = [self._fixed]
            return self._activation_passed(now)
        before = [a.jwt_kid for a in self._authorities]
        # Authorities not issued by the configured upstream (or, without one, not self-signed)
        # would not verify against the bundle we publish: replace them.
        live = [a for a in self._authorities if a.not_after > now and self._ours(a)]
        if not live or self._current(live, now) is None:
            live.append(new_authority(self._td, self._config.key_type, self._config.ttl, now,
                                      upstream=self._upstream))
            log.info("created CA authority")
        current = self._current(live, now)
        assert current is not None
        newest = live[-1]
        issued, lifetime = _schedule(current)
        if newest is current and now >= issued + lifetime * PREPARE_AT:
            activate = max(now, issued + lifetime * ACTIVATE_AT)
            live.append(new_authority(
                self._td, self._config.key_type, self._config.ttl, now, active_from=activate,
                upstream=self._upstream,
            ))
            log.info("prepared next CA authority", extra={"active_from": activate.isoformat()})
        changed = [a.jwt_kid for a in live] != before
        if changed:
            self._authorities = live
            data = _encode(live)
            if self._sealer is not None:
                data = self._sealer.seal(data)
            write_private(self._path, data)
        return changed or self._activation_passed(now)

    def _activation_passed(self, now: datetime) -> bool:
        # A prepared authority becoming current changes which key signs: callers re-mint.
        current = self._current(self._authorities, now)
        kid = current.jwt_kid if current is not None else None
        changed, self._signing_kid = kid != self._signing_kid, kid
        return changed

    @staticmethod
    def _current(authorities: list[Authority], now: datetime) -> Authority | None:
        active = [a for a in authorities if a.active_from <= now < a.not_after]
        return max(active, key=lambda a: a.active_from) if active else None

    def next_event_at(self) -> datetime:
        """When maintain() next has work: preparing, activating or pruning an authority."""
        now = self._clock()
        current = self.current()
        if self._fixed is not None:
            return max(now, self._fixed.not_after)
        issued, lifetime = _schedule(current)
        times = [a.not_after for a in self._authorities]
        times += [a.active_from for a in self._authorities if a.active_from > now]
        if self._authorities[-1] is current:
            times.append(issued + lifetime * PREPARE_AT)
        return min(t for t in times if t > now) if any(t > now for t in times) else now

    # -- views -----------------------------------------------------------------------------

    def current(self) -> Authority:
        current = self._current(self._authorities, self._clock())
        if current is None:
            raise SigningError("no valid CA authority")
        return current

    def authorities(self) -> list[Authority]:
        now = self._clock()
        return [a for a in self._authorities if a.not_after > now]

    def _ours(self, a: Authority) -> bool:
        if self._upstream is None:
            return a.self_signed
        return a.cert.issuer == self._upstream.cert.subject and not a.self_signed

    def bundle_certs(self) -> list[x509.Certificate]:
        """The trust bundle: the org CA when there is one (the same on every node), else ours."""
        if self._fixed_root is not None:
            return [self._fixed_root]
        if self._upstream is not None:
            return [self._upstream.cert]
        return [a.cert for a in self.authorities()]

    def x509_bundle_der(self) -> bytes:
        """The same bytes object while the bundle is unchanged: every X.509 response carries it,
        and callers may cache what they build from it by identity."""
        certs = tuple(self.bundle_certs())
        if self._bundle_der is None or self._bundle_der[0] != certs:
            self._bundle_der = (certs, b"".join(c.public_bytes(Encoding.DER) for c in certs))
        return self._bundle_der[1]

    def x509_bundle_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.bundle_certs())

    def jwt_keys(self) -> dict[str, keys.PublicKey]:
        return {a.jwt_kid: a.jwt_key.public_key() for a in self.authorities()}

    def jwks(self) -> bytes:
        return jwks(self.jwt_keys())

    @property
    def trust_domain(self) -> str:
        return self._td
