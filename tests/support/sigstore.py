"""A private Sigstore for tests: a Fulcio-like CA, a CT log key, a Rekor v1 and a Rekor v2 log
and a timestamp authority, offline.

It signs artifacts into v0.3 bundles that sigstore-python verifies for real: the leaf chains to
the CA and carries an embedded precert SCT (optionally with SCT extensions, as static-CT logs
write) and the OIDC issuer extensions; the log entry has an RFC 6962 inclusion proof and a
signed checkpoint. Rekor v1 entries carry an integrated time and a signed entry timestamp;
Rekor v2 entries carry neither, their time is an RFC 3161 timestamp over the signature, and
their checkpoint may carry witness cosignatures. Entries: hashedrekord 0.0.1/0.0.2 (over the
artifact or over a DSSE envelope's PAE), dsse 0.0.1/0.0.2. Managed-key bundles (`publicKey`
instead of a certificate) too. Nothing in the verifier is patched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.sigstore_log import P256, TransparencyLog, b64, spki
from tests.support.sigstore_tsa import PrivateTSA

UTC = dt.UTC
GHA = "https://token.actions.githubusercontent.com"
OID_SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_REPOSITORY = "1.3.6.1.4.1.57264.1.12"
OID_REF = "1.3.6.1.4.1.57264.1.14"
OID_WORKFLOW = "1.3.6.1.4.1.57264.1.18"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
INTOTO = "application/vnd.in-toto+json"
#: A static-CT-API SCT extension: leaf_index (type 0), 5-byte index.
SCT_LEAF_INDEX = b"\x00\x00\x05\x00\x00\x00\x00\x2a"


def _pem(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _utf8(s: str) -> bytes:
    raw = s.encode()
    n = len(raw)
    length = (
        bytes([n]) if n < 128 else bytes([0x81, n]) if n < 256 else b"\x82" + n.to_bytes(2, "big")
    )
    return b"\x0c" + length + raw


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test.invalid"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload),
                                    payload)


def statement(data: bytes, name: str, builder: str = "",
              predicate_type: str = "https://slsa.dev/provenance/v1",
              statement_type: str = "https://in-toto.io/Statement/v1") -> bytes:
    doc = {
        "_type": statement_type,
        "subject": [{"name": name, "digest": {"sha256": hashlib.sha256(data).hexdigest()}}],
        "predicateType": predicate_type,
        "predicate": {"buildDefinition": {"buildType": "https://test.invalid/b"},
                      "runDetails": {"builder": {"id": builder}}},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class PrivateSigstore:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.inter_key = ec.generate_private_key(ec.SECP384R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.start = dt.datetime(2020, 1, 1, tzinfo=UTC)
        end = dt.datetime(2045, 1, 1, tzinfo=UTC)
        ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        self.root = (
            x509.CertificateBuilder().subject_name(_name("test-root"))
            .issuer_name(_name("test-root")).public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(self.start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(ca_usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.root_key.public_key()),
                           critical=False)
            .sign(self.root_key, hashes.SHA384())
        )
        self.inter = (
            x509.CertificateBuilder().subject_name(_name("test-intermediate"))
            .issuer_name(self.root.subject).public_key(self.inter_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(self.start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(ca_usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                self.inter_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.root_key.public_key()), critical=False)
            .sign(self.root_key, hashes.SHA384())
        )
        self.ct_id = hashlib.sha256(spki(self.ct_key.public_key())).digest()
        self.v1 = TransparencyLog("rekor.test.invalid - 4242")
        self.v2 = TransparencyLog("rekor-v2.test.invalid")
        self.tsa = PrivateTSA(self.start)

    # -- trust material ----------------------------------------------------------------------

    def trusted_root(self) -> dict[str, Any]:
        start = self.start.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [self.v1.instance(start), self.v2.instance(start)],
            "certificateAuthorities": [{
                "subject": {"organization": "test.invalid", "commonName": "test-root"},
                "uri": "https://fulcio.test.invalid",
                "certChain": {"certificates": [
                    {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                    for c in (self.inter, self.root)]},
                "validFor": {"start": start},
            }],
            "ctlogs": [{
                "baseUrl": "https://ctfe.test.invalid",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": b64(spki(self.ct_key.public_key())),
                              "keyDetails": P256, "validFor": {"start": start}},
                "logId": {"keyId": b64(self.ct_id)},
            }],
            "timestampAuthorities": [self.tsa.authority()],
        }

    def client_trust_config(self) -> dict[str, Any]:
        """The same root as a ClientTrustConfig (what `sigstore --trust-config` reads)."""
        return {
            "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": self.trusted_root(),
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": [], "oidcUrls": [], "rekorTlogUrls": [], "tsaUrls": [],
            },
        }

    # -- certificates ------------------------------------------------------------------------

    def _leaf_cert(
        self, identity: str, issuer: str, when: dt.datetime, extra: dict[str, str],
        sct_extensions: bytes = b"",
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        san: x509.GeneralName = (
            x509.RFC822Name(identity) if "@" in identity and "://" not in identity
            else x509.UniformResourceIdentifier(identity)
        )
        serial = x509.random_serial_number()

        def builder() -> x509.CertificateBuilder:
            b = (
                x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(self.inter.subject).public_key(key.public_key())
                .serial_number(serial).not_valid_before(when - dt.timedelta(minutes=1))
                .not_valid_after(when + dt.timedelta(minutes=10))
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                               critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.inter_key.public_key()), critical=False)
                .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                .add_extension(x509.UnrecognizedExtension(OID_ISSUER_V1, issuer.encode()),
                               critical=False)
                .add_extension(x509.UnrecognizedExtension(OID_ISSUER_V2, _utf8(issuer)),
                               critical=False)
            )
            for oid, val in extra.items():
                b = b.add_extension(
                    x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), _utf8(val)),
                    critical=False)
            return b

        tbs = builder().sign(self.inter_key, hashes.SHA256()).tbs_certificate_bytes
        ts = int(when.timestamp() * 1000)
        issuer_hash = hashlib.sha256(spki(self.inter_key.public_key())).digest()
        ext = struct.pack("!H", len(sct_extensions)) + sct_extensions
        signed = (struct.pack("!BBQH", 0, 0, ts, 1) + issuer_hash + len(tbs).to_bytes(3, "big")
                  + tbs + ext)
        sig = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (b"\x00" + self.ct_id + struct.pack("!Q", ts) + ext + bytes([4, 3])
               + struct.pack("!H", len(sig)) + sig)
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        value = (b"\x04" + (bytes([len(sct_list)]) if len(sct_list) < 128
                            else bytes([0x81, len(sct_list)])) + sct_list)
        cert = (builder()
                .add_extension(x509.UnrecognizedExtension(OID_SCT_LIST, value), critical=False)
                .sign(self.inter_key, hashes.SHA256()))
        assert cert.tbs_precertificate_bytes == tbs
        return cert, key

    # -- log entries -------------------------------------------------------------------------

    @staticmethod
    def _v2_verifier(signer: x509.Certificate | ec.EllipticCurvePublicKey) -> dict[str, Any]:
        if isinstance(signer, x509.Certificate):
            raw = {"x509Certificate": {"rawBytes": b64(signer.public_bytes(
                serialization.Encoding.DER))}}
        else:
            raw = {"publicKey": {"rawBytes": b64(spki(signer))}}
        return {**raw, "keyDetails": P256}

    @staticmethod
    def _pem(signer: x509.Certificate | ec.EllipticCurvePublicKey) -> str:
        if isinstance(signer, x509.Certificate):
            return b64(signer.public_bytes(serialization.Encoding.PEM))
        return b64(_pem(signer))

    def _hashedrekord(self, version: str, digest: bytes, sig: bytes, signer: Any) -> bytes:
        if version == "0.0.1":
            spec: dict[str, Any] = {
                "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
                "signature": {"content": b64(sig), "publicKey": {"content": self._pem(signer)}},
            }
        else:
            spec = {"hashedRekordV002": {
                "data": {"algorithm": "SHA2_256", "digest": b64(digest)},
                "signature": {"content": b64(sig), "verifier": self._v2_verifier(signer)}}}
        return rfc8785.dumps({"apiVersion": version, "kind": "hashedrekord", "spec": spec})

    def _dsse(self, version: str, envelope: dict[str, Any], payload: bytes, sig: bytes,
              signer: Any) -> bytes:
        if version == "0.0.1":
            spec: dict[str, Any] = {
                "envelopeHash": {"algorithm": "sha256",
                                 "value": hashlib.sha256(rfc8785.dumps(envelope)).hexdigest()},
                "payloadHash": {"algorithm": "sha256",
                                "value": hashlib.sha256(payload).hexdigest()},
                "signatures": [{"signature": b64(sig), "verifier": self._pem(signer)}],
            }
        else:
            spec = {"dsseV002": {
                "payloadHash": {"algorithm": "SHA2_256",
                                "digest": b64(hashlib.sha256(payload).digest())},
                "signatures": [{"content": b64(sig), "verifier": self._v2_verifier(signer)}]}}
        return rfc8785.dumps({"apiVersion": version, "kind": "dsse", "spec": spec})

    def _material(self, body: bytes, kind: str, rekor: str, when: dt.datetime, sig: bytes,
                  *, witnesses: int = 0, timestamp: bool | None = None,
                  embed_tsa_cert: bool = True) -> dict[str, Any]:
        """verificationMaterial without the signer: the log entry and signed timestamps."""
        version = "0.0.1" if rekor == "v1" else "0.0.2"
        log = self.v1 if rekor == "v1" else self.v2
        proof = log.append(body, witnesses)
        entry: dict[str, Any] = {
            "logIndex": proof["logIndex"],
            "logId": {"keyId": b64(log.key_id)},
            "kindVersion": {"kind": kind, "version": version},
            "inclusionProof": proof,
            "canonicalizedBody": b64(body),
        }
        if rekor == "v1":
            integrated = int(when.timestamp())
            promise = rfc8785.dumps({"body": b64(body), "integratedTime": integrated,
                                     "logID": log.key_id.hex(), "logIndex": int(proof["logIndex"])})
            entry["integratedTime"] = str(integrated)
            entry["inclusionPromise"] = {"signedEntryTimestamp": b64(
                log.key.sign(promise, ec.ECDSA(hashes.SHA256())))}
        material: dict[str, Any] = {"tlogEntries": [entry]}
        if timestamp if timestamp is not None else rekor == "v2":
            token = self.tsa.timestamp(sig, when, embed_cert=embed_tsa_cert)
            material["timestampVerificationData"] = {
                "rfc3161Timestamps": [{"signedTimestamp": b64(token)}]}
        return material

    # -- signing -----------------------------------------------------------------------------

    def sign(
        self, data: bytes, identity: str, issuer: str = GHA, extra: dict[str, str] | None = None,
        *, rekor: str = "v1", sct_extensions: bytes = b"", **material: Any,
    ) -> dict[str, Any]:
        """A message-signature bundle. `material`: witnesses, timestamp, embed_tsa_cert."""
        when = dt.datetime.now(UTC)
        cert, key = self._leaf_cert(identity, issuer, when, extra or {}, sct_extensions)
        digest = hashlib.sha256(data).digest()
        sig = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        body = self._hashedrekord("0.0.1" if rekor == "v1" else "0.0.2", digest, sig, cert)
        vm = self._material(body, "hashedrekord", rekor, when, sig, **material)
        return {
            "mediaType": BUNDLE_V03,
            "verificationMaterial": {
                "certificate": {"rawBytes": b64(cert.public_bytes(serialization.Encoding.DER))},
                **vm},
            "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": b64(digest)},
                                 "signature": b64(sig)},
        }

    def attest(
        self, data: bytes, name: str, identity: str, builder: str, issuer: str = GHA,
        predicate_type: str = "https://slsa.dev/provenance/v1", *, rekor: str = "v1",
        entry: str = "", **material: Any,
    ) -> dict[str, Any]:
        """A DSSE in-toto SLSA provenance attestation whose subject is `data`. `entry`:
        "dsse" (Rekor v1 default) or "hashedrekord" over the PAE (Rekor v2 default)."""
        when = dt.datetime.now(UTC)
        cert, key = self._leaf_cert(identity, issuer, when, {})
        payload = statement(data, name, builder, predicate_type)
        sig = key.sign(pae(INTOTO, payload), ec.ECDSA(hashes.SHA256()))
        return self._dsse_bundle(payload, sig, cert, {"certificate": {"rawBytes": b64(
            cert.public_bytes(serialization.Encoding.DER))}}, rekor, entry, when, material)

    def _dsse_bundle(self, payload: bytes, sig: bytes, signer: Any, verifier: dict[str, Any],
                     rekor: str, entry: str, when: dt.datetime,
                     material: dict[str, Any]) -> dict[str, Any]:
        envelope = {"payload": b64(payload), "payloadType": INTOTO,
                    "signatures": [{"sig": b64(sig)}]}
        version = "0.0.1" if rekor == "v1" else "0.0.2"
        kind = entry or ("dsse" if rekor == "v1" else "hashedrekord")
        body = (self._dsse(version, envelope, payload, sig, signer) if kind == "dsse" else
                self._hashedrekord(version, hashlib.sha256(pae(INTOTO, payload)).digest(), sig,
                                   signer))
        vm = self._material(body, kind, rekor, when, sig, **material)
        return {"mediaType": BUNDLE_V03, "verificationMaterial": {**verifier, **vm},
                "dsseEnvelope": envelope}

    def sign_with_key(self, data: bytes, key: ec.EllipticCurvePrivateKey, *,
                      rekor: str = "v1", **material: Any) -> dict[str, Any]:
        """A managed-key bundle (`cosign sign-blob --key`): no certificate, a key hint."""
        when = dt.datetime.now(UTC)
        digest = hashlib.sha256(data).digest()
        sig = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        body = self._hashedrekord("0.0.1" if rekor == "v1" else "0.0.2", digest, sig,
                                  key.public_key())
        vm = self._material(body, "hashedrekord", rekor, when, sig, **material)
        hint = {"publicKey": {"hint": b64(hashlib.sha256(spki(key.public_key())).digest())}}
        return {
            "mediaType": BUNDLE_V03, "verificationMaterial": {**hint, **vm},
            "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": b64(digest)},
                                 "signature": b64(sig)},
        }

    def attest_with_key(self, data: bytes, name: str, key: ec.EllipticCurvePrivateKey, *,
                        rekor: str = "v1", entry: str = "", **material: Any) -> dict[str, Any]:
        when = dt.datetime.now(UTC)
        payload = statement(data, name, "https://test.invalid/builder")
        sig = key.sign(pae(INTOTO, payload), ec.ECDSA(hashes.SHA256()))
        hint = {"publicKey": {"hint": b64(hashlib.sha256(spki(key.public_key())).digest())}}
        return self._dsse_bundle(payload, sig, key.public_key(), hint, rekor, entry, when,
                                 material)
