"""The HTTPS endpoint in tests: a private web CA for its server certificate (standard clients
check host names, which an SVID's URI SAN cannot satisfy), free ports, and an agent's SVID files
written by `ensign fetch x509 --write` for httpx."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.daemon import ENSIGN, Daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebCa:
    """A CA that signs server certificates for 127.0.0.1 (https_web in tests)."""

    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "web-ca.pem"

    @classmethod
    def create(cls, where: Path) -> WebCa:
        where.mkdir(parents=True, exist_ok=True)
        ca = cls(where)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test web CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))
        ca.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (where / "web-ca.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return ca

    def issue(self, name: str, *, days: float = 1,
              ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
        ca_key = serialization.load_pem_private_key((self.dir / "web-ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost")]
                    + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path


def http_config(port: int, cert: Path | None, key: Path | None, *,
                issuer: str = "", extra: str = "") -> str:
    issuer = issuer or f"https://127.0.0.1:{port}"
    files = f'tls_cert = "{cert}"\ntls_key = "{key}"\n' if cert and key else ""
    return f'[http]\nlisten = "127.0.0.1:{port}"\nissuer = "{issuer}"\n{files}{extra}'


def svid_files(d: Daemon, out: Path, *, gid: int | None = None) -> tuple[Path, Path, Path]:
    """`ensign fetch x509 --write` as the agent (in supplementary group `gid`)."""
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint}
    subprocess.run([*ENSIGN, "fetch", "x509", "--write", str(out)], env=env, check=True,
                   capture_output=True, timeout=30,
                   extra_groups=[gid] if gid is not None else None)
    return out / "svid.0.pem", out / "svid.0.key", out / "bundle.0.pem"
