"""A real PostgreSQL for the fleet tests and benchmarks: Debian's server binaries, a cluster in a
temp dir run by the `postgres` user, TLS with client-certificate authentication on 127.0.0.1.

Roles authenticate with certificates issued by the cluster's own test CA (CN = role name), the
way a fleet's nodes do; the superuser reaches the cluster over its Unix socket in the temp dir.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE = "ensign"


def available() -> str | None:
    """Why a cluster cannot be run here (None: it can)."""
    if not (BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {BIN} (scripts/bootstrap.sh installs them)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres system user"
    if os.geteuid() != 0:
        return "running the cluster as the postgres user needs root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertIssuer:
    """Issues the server's and the roles' certificates."""

    def __init__(self, directory: Path, name: str = "fleet test CA") -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(hours=1))
                     .not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / f"{name.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(hours=1))
             .not_valid_after(now + dt.timedelta(days=1)))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        stem = self.dir / f"{cn}{'-server' if server else ''}"
        crt, pem = stem.with_suffix(".crt"), stem.with_suffix(".key")
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(_pem_key(key))
        pem.chmod(0o600)
        return crt, pem


@dataclass
class Cluster:
    root: Path
    port: int = field(default_factory=free_port)
    ca: CertIssuer | None = None

    @property
    def data(self) -> Path:
        return self.root / "pgdata"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres",
                               "--init-groups", *argv], capture_output=True, text=True,
                              check=check, timeout=60, cwd="/")

    def init(self) -> None:
        pg = pwd.getpwnam("postgres")
        self.root.chmod(0o755)
        self.certs.mkdir(mode=0o755)
        self.ca = CertIssuer(self.certs)
        crt, key = self.ca.issue("localhost", server=True)
        for p in (crt, key):
            os.chown(p, pg.pw_uid, pg.pw_gid)
        self.data.mkdir(mode=0o700)
        os.chown(self.data, pg.pw_uid, pg.pw_gid)
        os.chown(self.root, pg.pw_uid, pg.pw_gid)  # the Unix socket and the log live here
        self._as_postgres(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                          "postgres", "--no-sync")
        (self.data / "postgresql.auto.conf").write_text(
            f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
            f"unix_socket_directories = '{self.root}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            f"ssl = on\nssl_cert_file = '{crt}'\nssl_key_file = '{key}'\n"
            f"ssl_ca_file = '{self.ca.path}'\nmax_connections = 200\n")
        # The superuser only over the socket; everyone else with a client certificate.
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\n"
            "hostssl all all 127.0.0.1/32 cert\n")
        self.start()
        self.sql(f"CREATE DATABASE {DATABASE}", db="postgres")

    def start(self) -> None:
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                          "-o", "-c logging_collector=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
                          check=False)

    def running(self) -> bool:
        return self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "status",
                                 check=False).returncode == 0

    def superuser_url(self, db: str = DATABASE) -> str:
        return f"postgresql://postgres@/{db}?host={urllib.parse.quote(str(self.root))}" \
               f"&port={self.port}"

    def url(self, user: str, db: str = DATABASE, *, cert_for: str | None = None,
            ca: CertIssuer | None = None) -> str:
        """A TLS URL for `user`, authenticating with a certificate for `cert_for` (default the
        same name) issued by `ca` (default the cluster's)."""
        issuer = ca or self.ca
        assert issuer is not None
        crt, key = issuer.issue(cert_for or user)
        q = urllib.parse.urlencode({"sslmode": "verify-full", "sslrootcert": str(self.ca_path),
                                    "sslcert": str(crt), "sslkey": str(key)})
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}?{q}"

    @property
    def ca_path(self) -> Path:
        assert self.ca is not None
        return self.ca.path

    def sql(self, statement: str, db: str = DATABASE) -> str:
        """Run one statement as the superuser; returns psql's unaligned output."""
        out = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                              str(self.root), "-p", str(self.port), "-U", "postgres", "-d", db,
                              "-c", statement], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"psql {statement!r}: {out.stderr.strip()}")
        return out.stdout.strip()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> Cluster:
    root = Path(tempfile.mkdtemp(prefix="enspg", dir="/tmp"))
    cluster = Cluster(root=root)
    try:
        cluster.init()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
