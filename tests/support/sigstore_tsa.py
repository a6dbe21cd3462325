"""A private RFC 3161 timestamp authority for tests: what Rekor v2 bundles rely on for time.

rfc3161-client only verifies, so responses are built here with pyasn1-modules (the ASN.1
modules of RFC 3161, 5652 and 5035): a TSTInfo over SHA-256 of the message, wrapped in CMS
SignedData with the contentType, messageDigest and signingCertificateV2 attributes, signed by
a TSA leaf (critical EKU timeStamping) under a TSA root. The TSA certificate is embedded or
left out, as real TSAs do either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ, useful
from pyasn1_modules import rfc3161, rfc5035, rfc5280, rfc5652

SHA256 = univ.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
ECDSA_SHA256 = univ.ObjectIdentifier("1.2.840.10045.4.3.2")
POLICY = univ.ObjectIdentifier("1.3.6.1.4.1.57264.2")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test.invalid"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _alg(oid: univ.ObjectIdentifier) -> rfc5280.AlgorithmIdentifier:
    alg = rfc5280.AlgorithmIdentifier()
    alg["algorithm"] = oid
    return alg


def _attribute(oid: univ.ObjectIdentifier, value: Any) -> rfc5652.Attribute:
    attr = rfc5652.Attribute()
    attr["attrType"] = oid
    attr["attrValues"].append(univ.Any(encoder.encode(value)))
    return attr


class PrivateTSA:
    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        end = start + dt.timedelta(days=365 * 25)
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.root = (
            x509.CertificateBuilder().subject_name(_name("test-tsa-root"))
            .issuer_name(_name("test-tsa-root")).public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.root_key.public_key()),
                           critical=False)
            .sign(self.root_key, hashes.SHA384())
        )
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("test-tsa"))
            .issuer_name(self.root.subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                           critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.root_key.public_key()), critical=False)
            .sign(self.root_key, hashes.SHA384())
        )
        self._serial = 1

    def authority(self) -> dict[str, Any]:
        """The trusted root's `timestampAuthorities` entry."""
        import base64

        return {
            "subject": {"organization": "test.invalid", "commonName": "test-tsa"},
            "uri": "https://tsa.test.invalid",
            "certChain": {"certificates": [
                {"rawBytes": base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()}
                for c in (self.cert, self.root)]},
            "validFor": {"start": self.start.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }

    def timestamp(self, message: bytes, when: dt.datetime, *, embed_cert: bool = True) -> bytes:
        """A DER TimeStampResp over sha256(message) at `when`."""
        self._serial += 1
        info = rfc3161.TSTInfo()
        info["version"] = 1
        info["policy"] = POLICY
        info["messageImprint"]["hashAlgorithm"] = _alg(SHA256)
        info["messageImprint"]["hashedMessage"] = hashlib.sha256(message).digest()
        info["serialNumber"] = self._serial
        info["genTime"] = useful.GeneralizedTime(when.strftime("%Y%m%d%H%M%SZ"))
        tst_der = encoder.encode(info)

        cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        asn1_cert, _ = decoder.decode(cert_der, asn1Spec=rfc5280.Certificate())
        ess = rfc5035.ESSCertIDv2()
        ess["certHash"] = hashlib.sha256(cert_der).digest()
        signing_cert = rfc5035.SigningCertificateV2()
        signing_cert["certs"].append(ess)
        attrs = [
            _attribute(rfc5652.id_contentType, rfc3161.id_ct_TSTInfo),
            _attribute(rfc5652.id_messageDigest,
                       univ.OctetString(hashlib.sha256(tst_der).digest())),
            _attribute(rfc5035.id_aa_signingCertificateV2, signing_cert),
        ]
        # The signature covers the attributes DER-encoded as a SET OF (RFC 5652 §5.4).
        plain = rfc5652.SignedAttributes()
        plain.extend(attrs)
        signature = self.key.sign(encoder.encode(plain), ec.ECDSA(hashes.SHA256()))

        signer = rfc5652.SignerInfo()
        signer["version"] = 1
        sid = signer["sid"]["issuerAndSerialNumber"]
        sid["issuer"] = asn1_cert["tbsCertificate"]["issuer"]
        sid["serialNumber"] = asn1_cert["tbsCertificate"]["serialNumber"]
        signer["digestAlgorithm"] = _alg(SHA256)
        signer["signedAttrs"].extend(attrs)
        signer["signatureAlgorithm"] = _alg(ECDSA_SHA256)
        signer["signature"] = signature

        signed = rfc5652.SignedData()
        signed["version"] = 3
        signed["digestAlgorithms"].append(_alg(SHA256))
        signed["encapContentInfo"]["eContentType"] = rfc3161.id_ct_TSTInfo
        signed["encapContentInfo"]["eContent"] = tst_der
        if embed_cert:
            choice = rfc5652.CertificateChoices()
            choice["certificate"] = asn1_cert
            signed["certificates"].append(choice)
        signed["signerInfos"].append(signer)

        resp = rfc3161.TimeStampResp()
        resp["status"]["status"] = 0
        resp["timeStampToken"]["contentType"] = rfc5652.id_signedData
        resp["timeStampToken"]["content"] = univ.Any(encoder.encode(signed))
        return bytes(encoder.encode(resp))
