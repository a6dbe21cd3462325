"""A private Sigstore for tests: a Fulcio-like CA, a CT log key and a Rekor key, offline.

It signs artifacts into v0.3 bundles (hashedrekord or dsse entries) that sigstore-python
verifies for real: the leaf chains to the CA, carries an embedded precert SCT signed by the CT
key and the OIDC issuer extensions; the Rekor entry has an RFC 6962 inclusion proof, a signed
checkpoint and a signed entry timestamp. Nothing in the verifier is patched.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.UTC
GHA = "https://token.actions.githubusercontent.com"
OID_SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_REPOSITORY = "1.3.6.1.4.1.57264.1.12"
OID_REF = "1.3.6.1.4.1.57264.1.14"
OID_WORKFLOW = "1.3.6.1.4.1.57264.1.18"


def trusted_tmp() -> Path:
    """A temporary directory whose every component only root can write (not under /tmp, which
    anyone can write): where script attestation accepts scripts and unit files."""
    run = Path("/run")
    st = run.stat()
    if os.geteuid() != 0 or st.st_uid != 0 or st.st_mode & 0o022:
        pytest.skip("needs root and a /run that only root can write")
    d = Path(tempfile.mkdtemp(prefix="ens-trusted-", dir=run))
    d.chmod(0o755)
    return d


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _utf8(s: str) -> bytes:
    raw = s.encode()
    n = len(raw)
    length = (
        bytes([n]) if n < 128 else bytes([0x81, n]) if n < 256 else b"\x82" + n.to_bytes(2, "big")
    )
    return b"\x0c" + length + raw


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return _node(_root(leaves[:k]), _root(leaves[k:]))


def _audit_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_audit_path(m, leaves[:k]), _root(leaves[k:])]
    return [*_audit_path(m - k, leaves[k:]), _root(leaves[:k])]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test.invalid"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


class PrivateSigstore:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.inter_key = ec.generate_private_key(ec.SECP384R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.start = dt.datetime(2020, 1, 1, tzinfo=UTC)
        end = dt.datetime(2045, 1, 1, tzinfo=UTC)
        ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        self.root = (
            x509.CertificateBuilder()
            .subject_name(_name("test-root"))
            .issuer_name(_name("test-root"))
            .public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(ca_usage, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.root_key.public_key()),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA384())
        )
        self.inter = (
            x509.CertificateBuilder()
            .subject_name(_name("test-intermediate"))
            .issuer_name(self.root.subject)
            .public_key(self.inter_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(ca_usage, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.inter_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA384())
        )
        self.rekor_id = hashlib.sha256(_spki(self.rekor_key.public_key())).digest()
        self.ct_id = hashlib.sha256(_spki(self.ct_key.public_key())).digest()
        self._log = [os.urandom(32) for _ in range(5)]

    def trusted_root(self) -> dict[str, Any]:
        start = self.start.strftime("%Y-%m-%dT%H:%M:%SZ")

        def key(k: Any) -> dict[str, Any]:
            return {
                "rawBytes": b64(_spki(k.public_key())),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": start},
            }

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [
                {
                    "baseUrl": "https://rekor.test.invalid",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": key(self.rekor_key),
                    "logId": {"keyId": b64(self.rekor_id)},
                }
            ],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "test.invalid", "commonName": "test-root"},
                    "uri": "https://fulcio.test.invalid",
                    "certChain": {
                        "certificates": [
                            {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                            for c in (self.inter, self.root)
                        ]
                    },
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [
                {
                    "baseUrl": "https://ctfe.test.invalid",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": key(self.ct_key),
                    "logId": {"keyId": b64(self.ct_id)},
                }
            ],
            "timestampAuthorities": [],
        }

    def _leaf_cert(
        self, identity: str, issuer: str, when: dt.datetime, extra: dict[str, str]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        san: x509.GeneralName = (
            x509.RFC822Name(identity)
            if "@" in identity and "://" not in identity
            else x509.UniformResourceIdentifier(identity)
        )
        serial = x509.random_serial_number()

        def builder() -> x509.CertificateBuilder:
            b = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.inter.subject)
                .public_key(key.public_key())
                .serial_number(serial)
                .not_valid_before(when - dt.timedelta(minutes=1))
                .not_valid_after(when + dt.timedelta(minutes=10))
                .add_extension(
                    x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                    critical=True,
                )
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.inter_key.public_key()),
                    critical=False,
                )
                .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                .add_extension(
                    x509.UnrecognizedExtension(OID_ISSUER_V1, issuer.encode()), critical=False
                )
                .add_extension(
                    x509.UnrecognizedExtension(OID_ISSUER_V2, _utf8(issuer)), critical=False
                )
            )
            for oid, val in extra.items():
                b = b.add_extension(
                    x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), _utf8(val)),
                    critical=False,
                )
            return b

        tbs = builder().sign(self.inter_key, hashes.SHA256()).tbs_certificate_bytes
        ts = int(when.timestamp() * 1000)
        issuer_hash = hashlib.sha256(_spki(self.inter_key.public_key())).digest()
        signed = (
            struct.pack("!BBQH", 0, 0, ts, 1)
            + issuer_hash
            + len(tbs).to_bytes(3, "big")
            + tbs
            + struct.pack("!H", 0)
        )
        sig = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            b"\x00"
            + self.ct_id
            + struct.pack("!QH", ts, 0)
            + bytes([4, 3])
            + struct.pack("!H", len(sig))
            + sig
        )
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        value = (
            b"\x04"
            + (bytes([len(sct_list)]) if len(sct_list) < 128 else bytes([0x81, len(sct_list)]))
            + sct_list
        )
        cert = (
            builder()
            .add_extension(x509.UnrecognizedExtension(OID_SCT_LIST, value), critical=False)
            .sign(self.inter_key, hashes.SHA256())
        )
        assert cert.tbs_precertificate_bytes == tbs
        return cert, key

    def _entry(self, body: bytes, kind: str, when: dt.datetime) -> dict[str, Any]:
        integrated = int(when.timestamp())
        self._log.append(_leaf(body))
        index, size = len(self._log) - 1, len(self._log)
        root = _root(self._log)
        note = f"rekor.test.invalid - 4242\n{size}\n{b64(root)}\n"
        csig = self.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = f"{note}\n\u2014 rekor.test.invalid {b64(self.rekor_id[:4] + csig)}\n"
        promise = rfc8785.dumps(
            {
                "body": b64(body),
                "integratedTime": integrated,
                "logID": self.rekor_id.hex(),
                "logIndex": index,
            }
        )
        return {
            "logIndex": str(index),
            "logId": {"keyId": b64(self.rekor_id)},
            "kindVersion": {"kind": kind, "version": "0.0.1"},
            "integratedTime": str(integrated),
            "inclusionPromise": {
                "signedEntryTimestamp": b64(self.rekor_key.sign(promise, ec.ECDSA(hashes.SHA256())))
            },
            "inclusionProof": {
                "logIndex": str(index),
                "rootHash": b64(root),
                "treeSize": str(size),
                "hashes": [b64(h) for h in _audit_path(index, self._log)],
                "checkpoint": {"envelope": checkpoint},
            },
            "canonicalizedBody": b64(body),
        }

    def sign(
        self, data: bytes, identity: str, issuer: str = GHA, extra: dict[str, str] | None = None
    ) -> dict[str, Any]:
        when = dt.datetime.now(UTC)
        cert, key = self._leaf_cert(identity, issuer, when, extra or {})
        digest = hashlib.sha256(data).digest()
        sig = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        body = rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
                    "signature": {"content": b64(sig), "publicKey": {"content": b64(pem)}},
                },
            }
        )
        return {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [self._entry(body, "hashedrekord", when)],
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": b64(digest)},
                "signature": b64(sig),
            },
        }

    def attest(
        self,
        data: bytes,
        name: str,
        identity: str,
        builder: str,
        issuer: str = GHA,
        predicate_type: str = "https://slsa.dev/provenance/v1",
    ) -> dict[str, Any]:
        """A DSSE in-toto SLSA provenance attestation whose subject is `data`."""
        when = dt.datetime.now(UTC)
        cert, key = self._leaf_cert(identity, issuer, when, {})
        statement = {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": name, "digest": {"sha256": hashlib.sha256(data).hexdigest()}}],
            "predicateType": predicate_type,
            "predicate": {
                "buildDefinition": {"buildType": "https://test.invalid/b"},
                "runDetails": {"builder": {"id": builder}},
            },
        }
        ptype = "application/vnd.in-toto+json"
        payload = json.dumps(statement, separators=(",", ":")).encode()
        pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(payload), payload)
        sig = key.sign(pae, ec.ECDSA(hashes.SHA256()))
        envelope = {
            "payload": b64(payload),
            "payloadType": ptype,
            "signatures": [{"sig": b64(sig)}],
        }
        pem = cert.public_bytes(serialization.Encoding.PEM)
        body = rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(rfc8785.dumps(envelope)).hexdigest(),
                    },
                    "payloadHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(payload).hexdigest(),
                    },
                    "signatures": [{"signature": b64(sig), "verifier": b64(pem)}],
                },
            }
        )
        return {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [self._entry(body, "dsse", when)],
            },
            "dsseEnvelope": envelope,
        }
