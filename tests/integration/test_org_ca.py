"""Many nodes, one trust bundle: node CAs signed by an organisation CA (online as `[ca]
upstream_*`, or offline through a CSR)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.daemon import Daemon, make_daemon, needs_root
from tests.support.fleet import org_ca as _org_ca
from tests.support.net import free_port
from tests.support.scripts import TLS_CLIENT, TLS_SERVER, spawn_with_group
from tests.support.scripts import TLS_CLIENT_GID as CLIENT_GID
from tests.support.scripts import TLS_SERVER_GID as SERVER_GID


def _node(root: Path, cert: Path, key: Path) -> Daemon:
    root.mkdir(mode=0o755)
    return make_daemon(root, f'[ca]\nupstream_cert = "{cert}"\nupstream_key = "{key}"\n')


@needs_root
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
        port = str(free_port())
        server = spawn_with_group(TLS_SERVER, SERVER_GID, a.endpoint, port,
                                  str(client_id["spiffe_id"]))
        try:
            assert server.stdout is not None
            assert server.stdout.readline().split() == ["LISTENING", server_id["spiffe_id"]]
            client = subprocess.run([sys.executable, "-c", TLS_CLIENT, b.endpoint, port,
                                     str(server_id["spiffe_id"])], capture_output=True,
                                    text=True, extra_groups=[CLIENT_GID], timeout=30)
            assert client.returncode == 0, client.stderr
            assert client.stdout.split() == ["REPLY", "pong:ping", client_id["spiffe_id"]]
        finally:
            server.kill()
        # The node CAs differ, both are signed by the org root.
        node_cas = [_node_ca(d) for d in (a, b)]
        assert node_cas[0].public_key() != node_cas[1].public_key()
        for ca in node_cas:
            assert ca.issuer == org.subject
            ca.verify_directly_issued_by(org)
    finally:
        a.stop()
        b.stop()


def _node_ca(d: Daemon) -> x509.Certificate:
    """The node's current CA certificate, from its CA state file."""
    state = json.loads((d.data_dir / "ca" / "state.json").read_text())
    return x509.load_pem_x509_certificate(state["authorities"][-1]["cert"].encode())


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
    last = out.stderr.strip().splitlines()[-1]  # after the daemon's own log lines
    assert last == f"ensign: {wrong} is not the key of {cert}", out.stderr
    assert "Traceback" not in out.stderr
    assert out.returncode == 78, out.stderr


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
    d.cli("ca", "request-csr", "--config", str(d.config_path), "--out", str(csr))
    signed = tmp_path / "node.pem"
    signed.write_bytes(_sign_csr(csr.read_bytes(), key, org))
    # A certificate for some other key is refused; the right one installs.
    other = tmp_path / "other.pem"
    other.write_bytes(org.public_bytes(serialization.Encoding.PEM))
    bad = d.cli("ca", "install-signed", str(other), "--root", str(cert), "--config",
                str(d.config_path), check=False)
    assert bad.returncode == 65 and "not for the pending CA key" in bad.stderr
    # The right certificate with another organisation's root: a data error too (issue 23).
    (tmp_path / "other-org").mkdir()
    other_root, _, _ = _org_ca(tmp_path / "other-org")
    wrong_root = d.cli("ca", "install-signed", str(signed), "--root", str(other_root),
                       "--config", str(d.config_path), check=False)
    assert wrong_root.returncode == 65 and "not issued by that root" in wrong_root.stderr
    assert len(wrong_root.stderr.strip().splitlines()) == 1, wrong_root.stderr
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
