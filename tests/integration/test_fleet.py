"""Many nodes, one trust bundle: node CAs signed by an organisation CA; and many nodes, one
registry and one audit trail on PostgreSQL (the fleet): three real daemons on a real cluster."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient

from tests.integration.test_spiffe_tls import _CLIENT, _SERVER, CLIENT_GID, SERVER_GID, _free_port
from tests.support.clients import fetch_jwt
from tests.support.daemon import Daemon, make_daemon
from tests.support.fleet import FleetDb, Node, Trio, X509Stream, fleet_config, wait_until
from tests.support.fleet import org_ca as _org_ca
from tests.support.postgres import Cluster


def _node(root: Path, cert: Path, key: Path) -> Daemon:
    root.mkdir(mode=0o755)
    return make_daemon(root, f'[ca]\nupstream_cert = "{cert}"\nupstream_key = "{key}"\n')


@pytest.mark.skipif(os.geteuid() != 0, reason="setting supplementary groups needs root")
def test_two_nodes_handshake_with_only_the_org_bundle(short_tmp: Path, tmp_path: Path) -> None:
    cert, key, org = _org_ca(tmp_path)
    a = _node(short_tmp / "a", cert, key)
    b = _node(short_tmp / "b", cert, key)
    try:
        server_id = a.register("server", "unix:uid:0", f"unix:supplementary_gid:{SERVER_GID}")
        client_id = b.register("client", "unix:uid:0", f"unix:supplementary_gid:{CLIENT_GID}")
        for d in (a, b):  # each node publishes only the org CA
            d.register("observer", "unix:uid:0", extra=("--kind", "service"))
            out = d.cli("fetch", "bundles", "-o", "json").stdout
            assert out.count("BEGIN CERTIFICATE") == 1
        port = str(_free_port())
        server = subprocess.Popen([sys.executable, "-c", _SERVER, a.endpoint, port,
                                   str(client_id["spiffe_id"])], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, extra_groups=[SERVER_GID])
        try:
            assert server.stdout is not None
            assert server.stdout.readline().split() == ["LISTENING", server_id["spiffe_id"]]
            client = subprocess.run([sys.executable, "-c", _CLIENT, b.endpoint, port,
                                     str(server_id["spiffe_id"])], capture_output=True,
                                    text=True, extra_groups=[CLIENT_GID], timeout=30)
            assert client.returncode == 0, client.stderr
            assert client.stdout.split() == ["REPLY", "pong:ping", client_id["spiffe_id"]]
        finally:
            server.kill()
        # The node CAs differ, both chain to the org root.
        ca_a = (a.data_dir / "ca" / "state.json").read_text()
        ca_b = (b.data_dir / "ca" / "state.json").read_text()
        assert ca_a != ca_b and org.subject.rfc4514_string()
    finally:
        a.stop()
        b.stop()


def test_bad_upstream_is_a_clear_startup_error(tmp_path: Path, short_tmp: Path) -> None:
    cert, _, _ = _org_ca(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1())
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    cfg = short_tmp / "c.toml"
    cfg.write_text(f'socket_path = "{short_tmp}/s.sock"\nadmin_socket_path = "{short_tmp}/a.sock"\n'
                   f'data_dir = "{short_tmp}/data"\n'
                   f'[ca]\nupstream_cert = "{cert}"\nupstream_key = "{wrong}"\n')
    out = subprocess.run([sys.executable, "-m", "ensign.daemon", "daemon", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "is not the key of" in out.stderr
    assert "Traceback" not in out.stderr


def _sign_csr(csr_pem: bytes, org_key_path: Path, org: x509.Certificate) -> bytes:
    csr = x509.load_pem_x509_csr(csr_pem)
    key = serialization.load_pem_private_key(org_key_path.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(org.subject)
               .public_key(csr.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(days=7)))
    for ext in csr.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_offline_root_signs_a_node_ca_through_a_csr(short_tmp: Path, tmp_path: Path) -> None:
    from tests.support.daemon import Daemon

    cert, key, org = _org_ca(tmp_path)
    d = Daemon(root=short_tmp)
    d.write_config()
    csr = tmp_path / "node.csr"
    d.cli("ca", "request-csr", "--config", str(d.config_path), "-o", str(csr))
    signed = tmp_path / "node.pem"
    signed.write_bytes(_sign_csr(csr.read_bytes(), key, org))
    # A certificate for some other key is refused; the right one installs.
    other = tmp_path / "other.pem"
    other.write_bytes(org.public_bytes(serialization.Encoding.PEM))
    bad = d.cli("ca", "install-signed", str(other), "--root", str(cert), "--config",
                str(d.config_path), check=False)
    assert bad.returncode == 64 and "not for the pending CA key" in bad.stderr
    d.cli("ca", "install-signed", str(signed), "--root", str(cert), "--config",
          str(d.config_path))
    d.start()
    try:
        d.register("offline", "unix:uid:0")
        out = tmp_path / "svid"
        d.cli("fetch", "x509", "--write", str(out))
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "bundle.0.pem"),
                                 "-untrusted", str(out / "svid.0.pem"), str(out / "svid.0.pem")],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert (out / "bundle.0.pem").read_bytes() == cert.read_bytes()
    finally:
        d.stop()


# -- many nodes, one registry and one audit trail on PostgreSQL -------------------------------

NODES = ("node-1", "node-2", "node-3")


@pytest.fixture(scope="module")
def trio(pg: Cluster) -> Iterator[Trio]:
    """Three daemons sharing one fleet database and one organisation CA, for the whole module
    (the tests run in file order: later ones stop and restart the database and the nodes)."""
    root = Path(tempfile.mkdtemp(prefix="ensf", dir="/tmp"))
    root.chmod(0o755)
    db = FleetDb.create(pg, NODES)
    cert, key, _ = _org_ca(root)
    trio = Trio(db)
    try:
        for name in NODES:
            d = Daemon(root=root / name, extra_config=fleet_config(db, name, upstream=(cert, key)))
            d.root.mkdir(mode=0o755)
            d.start()
            trio.nodes.append(Node(name, d))
        yield trio
    finally:
        trio.stop()
        if not pg.running():
            pg.start()
        shutil.rmtree(root, ignore_errors=True)


def _local_lines(d: Daemon) -> list[str]:
    lines: list[str] = []
    for seg in sorted((d.data_dir / "audit").glob("segment-*.jsonl")):
        lines += seg.read_text().splitlines()
    return lines


def _shipped_lines(db: FleetDb, node: str) -> list[str]:
    return [r[0] for r in db.rows("SELECT line FROM audit_records WHERE node = %s ORDER BY seq",
                                  node)]


def _caught_up(db: FleetDb, n: Node) -> bool:
    """Every record of the node's local log is in the database (none lost, none twice)."""
    return _shipped_lines(db, n.name) == _local_lines(n.daemon)


def test_register_on_one_node_fetch_on_the_others_suspend_ends_streams_everywhere(
        trio: Trio) -> None:
    n1, n2, n3 = trio.nodes
    rec = n1.daemon.register("roamer", "unix:uid:0")
    for n in (n2, n3):  # the registration reaches the others' copies, and they issue from them
        wait_until(lambda n=n: rec["id"] in n.agents())
        client = WorkloadApiClient(socket_path=n.daemon.endpoint)
        try:
            svid = client.fetch_x509_svid()
        finally:
            client.close()
        assert str(svid.spiffe_id) == rec["spiffe_id"]
    streams = [X509Stream(n.daemon.endpoint) for n in trio.nodes]
    try:
        for s in streams:
            assert s.wait(lambda s=s: s.contexts, 10)
        n3.cli("agent", "suspend", str(rec["id"]), "--reason", "leaving the fleet")
        committed = time.monotonic()  # node 3 has its answer: the change is in the database
        for n, s in zip(trio.nodes, streams, strict=True):
            assert s.wait(lambda s=s: s.errors, 5), f"{n.name}: stream did not end"
            when, err = s.errors[0]
            assert "PERMISSION_DENIED" in repr(err) or "no identity" in str(err), err
            assert when - committed < 1.0, f"{n.name}: stream ended {when - committed:.2f}s on"
        for n in trio.nodes:
            assert n.agents()[str(rec["id"])] == "suspended"
    finally:
        for s in streams:
            s.close()
    # The change is audited once, by the node that made it.
    wait_until(lambda: all(_caught_up(trio.db, n) for n in trio.nodes))
    changes = trio.db.rows("SELECT node, line FROM audit_records WHERE subject = %s "
                           "AND type = 'registry.change'", rec["id"])
    actions = sorted((node, json.loads(line)["details"]["action"]) for node, line in changes)
    assert actions == [("node-1", "register"), ("node-3", "suspend")]
    n3.cli("agent", "resume", str(rec["id"]))


def test_a_jwt_svid_from_one_node_validates_on_every_node(trio: Trio) -> None:
    n1, n2, n3 = trio.nodes
    wait_until(lambda: all(n.agents().get(a) == "active" for n in trio.nodes
                           for a in n1.agents()))
    token = n1.cli("fetch", "jwt", "--audience", "payments").stdout.strip()
    kid = pyjwt.get_unverified_header(token)["kid"]
    # node 2's ValidateJWTSVID knows node 1's key (published in the database)
    out = n2.cli("validate", "jwt", "--audience", "payments", "--token", token, "-o", "json")
    assert json.loads(out.stdout)["spiffe_id"].startswith("spiffe://example.org/agent/")
    # py-spiffe checks the token itself against node 3's JWT bundle: the fleet's union
    client = WorkloadApiClient(socket_path=n3.daemon.endpoint)
    try:
        bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(
            TrustDomain("example.org"))
        assert bundle is not None and bundle.get_jwt_authority(kid) is not None
        svid = JwtSvid.parse_and_validate(token, bundle, {"payments"})
    finally:
        client.close()
    assert str(svid.spiffe_id).startswith("spiffe://example.org/agent/")
    # a token signed by a key no node published is refused
    forged = pyjwt.encode({"sub": str(svid.spiffe_id), "aud": ["payments"],
                           "exp": int(time.time()) + 60}, ec.generate_private_key(ec.SECP256R1()),
                          algorithm="ES256", headers={"kid": kid + "x"})
    bad = n2.cli("validate", "jwt", "--audience", "payments", "--token", forged, check=False)
    assert bad.returncode == 65 and "not found in the trust bundle" in bad.stderr


def test_fleet_status_and_audit_list_over_every_node(trio: Trio) -> None:
    n1 = trio.nodes[0]
    url = trio.db.admin_url
    wait_until(lambda: all(_caught_up(trio.db, n) for n in trio.nodes))
    st = json.loads(n1.cli("fleet", "status", "--database-url", url, "-o", "json").stdout)
    assert [n["name"] for n in st["nodes"]] == list(NODES)
    for n, row in zip(trio.nodes, st["nodes"], strict=True):
        own = json.loads(n.cli("status", "-o", "json").stdout)["fleet"]["jwt_keys"]
        assert set(row["jwt_keys"]) <= set(own.split(", "))  # every node serves the union
        assert row["heartbeat_age_seconds"] < 30
        assert row["audit_shipped"] > 0
    text = n1.cli("fleet", "status", "--database-url", url).stdout
    assert "node-2" in text and "AUDIT SHIPPED" in text
    listed = json.loads(n1.cli("audit", "list", "--fleet", "--database-url", url,
                               "--type", "daemon.", "-o", "json").stdout)
    assert sorted({r["node"] for r in listed}) == list(NODES)
    assert {r["type"] for r in listed} == {"daemon.start"}


@pytest.mark.timeout(300)
def test_database_down_nodes_keep_issuing_refuse_writes_and_catch_up(
        trio: Trio, pg: Cluster) -> None:
    n1, n2, n3 = trio.nodes
    rec = n1.daemon.register("steady", "unix:uid:0")
    wait_until(lambda: all(str(rec["id"]) in n.agents() for n in trio.nodes))
    pg.stop()
    try:
        for n in trio.nodes:  # health: still serving, and says why it is degraded
            health = wait_until(lambda n=n: (h := n.health())["notice"] and h)
            assert health["status"] == "SERVING"
            assert "unreachable" in health["notice"] and "registry writes" in health["notice"]
            # SVIDs keep coming from the copy: a new JWT (not cached) and an X.509-SVID
            jwts = fetch_jwt(str(n.daemon.socket), f"offline-{n.name}").svids
            assert rec["spiffe_id"] in [j.spiffe_id for j in jwts]
            x509 = json.loads(n.cli("fetch", "x509", "-o", "json").stdout)
            assert rec["spiffe_id"] in [s["spiffe_id"] for s in x509]
        refused = n2.cli("agent", "suspend", str(rec["id"]), "--reason", "x", check=False)
        assert refused.returncode == 69
        [line] = refused.stderr.strip().splitlines()
        assert "fleet database postgresql://fleet-admin@127.0.0.1" in line, line
        assert "registry writes" in line or "unavailable" in line, line
        assert "degraded" in " ".join(n3.cli("status").stdout.split())
        shown = json.loads(n3.cli("agent", "show", str(rec["id"]), "-o", "json").stdout)
        assert (shown["id"], shown["state"]) == (rec["id"], "active")  # reads: from the copy
    finally:
        pg.start()
    for n in trio.nodes:  # back by themselves
        wait_until(lambda n=n: not n.health()["notice"], timeout=30)
    n2.cli("agent", "suspend", str(rec["id"]), "--reason", "after the outage")
    for n in trio.nodes:
        wait_until(lambda n=n: n.agents()[str(rec["id"])] == "suspended")


@pytest.mark.timeout(300)
def test_a_change_made_while_a_node_was_cut_off_reaches_it(trio: Trio) -> None:
    n1, _, n3 = trio.nodes
    db = trio.db
    db.sql('ALTER ROLE "node-3" NOLOGIN')
    try:
        db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE usename = 'node-3'")
        wait_until(lambda: n3.health()["notice"])
        late = n1.daemon.register("late", "unix:uid:0")
        n1.cli("agent", "decommission", str(late["id"]), "--reason", "short-lived")
        assert str(late["id"]) not in n3.agents()  # node 3 serves its copy meanwhile
    finally:
        db.sql('ALTER ROLE "node-3" LOGIN')
    wait_until(lambda: n3.agents().get(str(late["id"])) == "decommissioned", timeout=30)
    wait_until(lambda: not n3.health()["notice"])
    # Nothing of any node's trail lost or doubled across the outages.
    wait_until(lambda: all(_caught_up(db, n) for n in trio.nodes), timeout=30)
    out = n1.cli("audit", "verify", "--fleet", "--database-url", db.admin_url, "-o", "json")
    verdicts = json.loads(out.stdout)
    assert [(v["node"], v["ok"], v["behind"]) for v in verdicts] == [
        (name, True, 0) for name in NODES]


@pytest.mark.timeout(300)
def test_kill_9_mid_shipping_loses_and_doubles_nothing(trio: Trio) -> None:
    n2 = trio.nodes[1]
    stop = threading.Event()

    def load() -> None:  # every fetch is an audit record the shipper must carry
        i = 0
        while not stop.is_set():
            i += 1
            with contextlib.suppress(Exception):
                fetch_jwt(str(n2.daemon.socket), f"load-{i % 50}")

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        for _ in range(10):
            base = len(_shipped_lines(trio.db, n2.name))
            wait_until(lambda b=base: len(_shipped_lines(trio.db, n2.name)) > b + 5, every=0.02)
            n2.daemon.stop(signal.SIGKILL)
            n2.daemon.start()
    finally:
        stop.set()
        worker.join(30)
    wait_until(lambda: _caught_up(trio.db, n2), timeout=30)
    local = _local_lines(n2.daemon)
    assert _shipped_lines(trio.db, n2.name) == local  # the shipped chain is the local one
    out = n2.cli("audit", "verify", "--fleet", "--database-url", trio.db.admin_url)
    assert f"node-2: ok; {len(local)} records" in out.stdout
    assert n2.cli("audit", "verify", "--config", str(n2.daemon.config_path)).returncode == 0
