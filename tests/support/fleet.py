"""Fleet harness: an organisation CA, a fleet database in the session's PostgreSQL, and nodes
(real daemons) configured to share it, each with its own data dir and sockets."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from ensign.proto import admin_pb2
from tests.support.daemon import ENSIGN, Daemon
from tests.support.postgres import Cluster

ADMIN = "fleet-admin"
_dbs = itertools.count(1)


def org_ca(d: Path) -> tuple[Path, Path, x509.Certificate]:
    """An organisation CA (cert, key) that signs every node's CA: one X.509 bundle for all."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Acme agents root")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = d / "org.pem", d / "org.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path, cert


def ensign(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENSIGN, *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class FleetDb:
    """One database of the session cluster, initialised for a fleet."""

    cluster: Cluster
    name: str

    @classmethod
    def create(cls, cluster: Cluster, nodes: tuple[str, ...]) -> FleetDb:
        db = cls(cluster, f"fleet{next(_dbs)}")
        cluster.sql(f"CREATE DATABASE {db.name}", db="postgres")
        args = ["fleet", "init", "--database-url", db.owner_url, "--admin", ADMIN]
        for n in nodes:
            args += ["--node", n]
        out = ensign(*args)
        assert out.returncode == 0, out.stderr
        return db

    @property
    def owner_url(self) -> str:
        return self.cluster.superuser_url(self.name)

    def url(self, user: str, **kw: Any) -> str:
        return self.cluster.url(user, self.name, **kw)

    @property
    def admin_url(self) -> str:
        return self.url(ADMIN)

    def sql(self, statement: str) -> str:
        return self.cluster.sql(statement, db=self.name)

    def rows(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.owner_url) as conn:
            return conn.execute(query.encode(), args).fetchall()


def fleet_config(db: FleetDb, node: str, *, upstream: tuple[Path, Path] | None = None,
                 admin: bool = True) -> str:
    # node_name is top-level: the text must come first in the config (before any other table)
    text = (f'node_name = "{node}"\n[fleet]\ndatabase_url = "{db.url(node)}"\n'
            'heartbeat_interval = "1s"\nconnect_timeout = "2s"\n')
    if admin:
        text += f'admin_database_url = "{db.admin_url}"\n'
    if upstream is not None:
        text += f'[ca]\nupstream_cert = "{upstream[0]}"\nupstream_key = "{upstream[1]}"\n'
    return text


@dataclass
class Node:
    name: str
    daemon: Daemon
    https: str = ""  # the base URL of its HTTPS endpoint, when it serves one

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.daemon.cli(*args, check=check)

    def agents(self) -> dict[str, str]:
        """id -> state, as this node's copy holds them (raw admin call: polled often)."""
        with grpc.insecure_channel(f"unix:{self.daemon.admin_socket}") as ch:
            raw = ch.unary_unary("/ensign.admin.v1.Admin/ListAgents")(
                admin_pb2.ListAgentsRequest().SerializeToString(), timeout=10)
        return {a.id: a.state for a in admin_pb2.ListAgentsResponse.FromString(raw).agents}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.cli("status", "-o", "json").stdout)
        return out

    def health(self) -> dict[str, str]:
        """Health's status, reason and notice (raw gRPC call: polled often)."""
        with grpc.insecure_channel(f"unix:{self.daemon.socket}") as ch:
            call = ch.unary_unary("/grpc.health.v1.Health/Check")
            raw, info = call.with_call(HealthCheckRequest().SerializeToString(), timeout=10)
        trailers = dict(info.trailing_metadata() or ())
        status = HealthCheckResponse.ServingStatus.Name(HealthCheckResponse.FromString(raw).status)
        return {"status": status, "reason": str(trailers.get("ensign-reason", "")),
                "notice": str(trailers.get("ensign-notice", ""))}


def wait_until(pred: Callable[[], Any], timeout: float = 20, every: float = 0.1) -> Any:
    """Poll until `pred()` is truthy; return its value, or fail naming the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {pred}")
        time.sleep(every)


@dataclass
class Trio:
    db: FleetDb
    nodes: list[Node] = field(default_factory=list)
    web_ca: Path | None = None  # the CA of the nodes' HTTPS certificates

    def stop(self) -> None:
        for n in self.nodes:
            if n.daemon.alive():
                n.daemon.stop()
