"""A node CA signed by an offline organisation root: a CSR out, a signed certificate in.

`request_csr` makes the node's CA key (kept in `data_dir/ca/pending-key.pem`, 0600) and a CSR
for it; the organisation signs that CSR wherever its root key lives. `install_signed` checks the
returned certificate (it is for the pending key, is a CA, names the trust domain and was issued
by the given root) and installs it with the root. The daemon then signs with that CA and
publishes the root as its bundle, on every node alike. Nothing rotates it automatically: the
root's owner renews it before it expires (health turns NOT_SERVING when it has).
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ensign.daemon import keys
from ensign.daemon.errors import InvalidData, SigningError, UsageError
from ensign.daemon.files import ensure_private_dir, write_private
from ensign.daemon.spiffe_id import SpiffeId

PENDING = "pending-key.pem"
EXTERNAL = "external.json"


def request_csr(data_dir: Path, trust_domain: str, key_type: keys.KeyType) -> bytes:
    ca_dir = data_dir / "ca"
    ensure_private_dir(data_dir)  # 0700 like the daemon makes it, even before its first start
    ensure_private_dir(ca_dir)
    key = keys.generate(key_type)
    write_private(ca_dir / PENDING, keys.to_pem(key))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ensign"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Ensign node CA {trust_domain}"),
        ]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(str(SpiffeId.for_trust_domain(trust_domain)))]),
            critical=False)
        .sign(key, keys.signature_hash(key))
    )
    return csr.public_bytes(Encoding.PEM)


def install_signed(data_dir: Path, trust_domain: str, cert_pem: bytes, root_pem: bytes) -> str:
    ca_dir = data_dir / "ca"
    try:
        key = keys.from_pem((ca_dir / PENDING).read_bytes())
    except OSError:
        raise UsageError(f"no pending CA key in {ca_dir}: run `ensign ca request-csr` first") \
            from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        root = x509.load_pem_x509_certificate(root_pem)
    except ValueError as e:
        raise InvalidData(f"not a PEM certificate: {e}") from None
    spki = keys.public_spki(key)
    if keys.public_spki(cert.public_key()) != spki:
        raise InvalidData("the certificate is not for the pending CA key (wrong CSR?)")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise InvalidData("the certificate is not a CA certificate (BasicConstraints CA=true)")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise InvalidData(f"the certificate was not issued by that root: {e}") from None
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier)
    if str(SpiffeId.for_trust_domain(trust_domain)) not in sans:
        raise InvalidData(f"the certificate does not name spiffe://{trust_domain}")
    if cert.not_valid_after_utc <= datetime.now(UTC):
        raise InvalidData("the certificate has already expired")
    jwt_key = keys.generate("ec-p256")
    doc = {"cert": cert_pem.decode(), "root": root.public_bytes(Encoding.PEM).decode(),
           "key": keys.to_pem(key).decode(), "jwt_key": keys.to_pem(jwt_key).decode(),
           "jwt_kid": base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")}
    write_private(ca_dir / EXTERNAL, json.dumps(doc).encode())
    (ca_dir / PENDING).unlink()
    return cert.not_valid_after_utc.isoformat()


def load_external(data_dir: Path) -> tuple[x509.Certificate, keys.PrivateKey, keys.PrivateKey,
                                           str, x509.Certificate] | None:
    path = data_dir / "ca" / EXTERNAL
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_bytes())
        return (x509.load_pem_x509_certificate(doc["cert"].encode()),
                keys.from_pem(doc["key"].encode()), keys.from_pem(doc["jwt_key"].encode()),
                str(doc["jwt_kid"]), x509.load_pem_x509_certificate(doc["root"].encode()))
    except (OSError, ValueError, KeyError) as e:
        raise SigningError(f"cannot load {path}: {e}") from None
