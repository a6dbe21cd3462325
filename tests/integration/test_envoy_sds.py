"""Real Envoys get their SVIDs from Ensign over SDS: mTLS between them, rotation, withdrawal.

Envoy A (root, attested by uid and executable path) terminates mTLS with its SVID and accepts
one client SPIFFE ID per listener through the `ALL` SPIFFE validator; Envoy B (uid 65534) is the
client with its own (`default`, validating A with `ROOTCA`), one new TLS connection per request.
The tests run in order on one set of processes: mTLS, then rotation, then B's suspension.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import NOBODY, Daemon, make_daemon
from tests.support.envoy import (
    Envoy,
    client_config,
    free_port,
    request,
    server_config,
    shared_binary,
)

A_ID = "spiffe://example.org/envoy-a"
B_ID = "spiffe://example.org/envoy-b"
TTL = 30  # seconds: rotation at half life, 15 s ± 3 s


@dataclass
class Mesh:
    daemon: Daemon
    a: Envoy
    b: Envoy
    b_entry: str
    allowed: int  # B's port whose upstream listener on A accepts B's SPIFFE ID
    refused: int  # B's port whose upstream listener on A accepts only another ID


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    root = Path(tempfile.mkdtemp(prefix="ensv", dir="/tmp"))
    root.chmod(0o755)
    logs = root / "logs"
    logs.mkdir()
    logs.chmod(0o777)  # B (uid 65534) writes its log here
    d = make_daemon(root, f'[svid]\nx509_ttl = "{TTL}s"\n')
    binary = shared_binary(root)
    d.register("envoy-a", "unix:uid:0", f"unix:path:{binary}",
               extra=("--kind", "service", "--spiffe-id", A_ID))
    b = d.register("envoy-b", f"unix:uid:{NOBODY}", extra=("--kind", "service",
                                                           "--spiffe-id", B_ID))
    a_ok, a_no, b_ok, b_no = free_port(), free_port(), free_port(), free_port()
    ea = Envoy("a", logs, server_config("a", free_port(), d.socket, A_ID,
                                        {a_ok: B_ID, a_no: "spiffe://example.org/other"}),
               binary)
    eb = Envoy("b", logs, client_config("b", free_port(), d.socket, "default",
                                        {b_ok: a_ok, b_no: a_no}, A_ID), binary, uid=NOBODY)
    try:
        ea.start()
        eb.start()
        ea.wait_live()
        eb.wait_live()
        yield Mesh(d, ea, eb, str(b["id"]), b_ok, b_no)
    finally:
        ea.stop()
        eb.stop()
        if d.alive():
            d.stop()
        shutil.rmtree(root, ignore_errors=True)


def issued_serials(d: Daemon, spiffe_id: str) -> list[str]:
    """Serials of the X.509-SVIDs the audit trail says went out over SDS for `spiffe_id`."""
    records = json.loads(d.cli("audit", "list", "--type", "svid.issued", "-o", "json").stdout)
    return [r["details"]["serial"] for r in records
            if r.get("spiffe_id") == spiffe_id and r["details"].get("via") == "sds"]


def same_serial(envoy_serial: str, audited: list[str]) -> bool:
    return any(int(envoy_serial, 16) == int(s, 16) for s in audited)


def test_mtls_passes_for_the_allowed_spiffe_id_and_is_refused_for_another(mesh: Mesh) -> None:
    status, body = request(mesh.allowed)
    assert (status, body) == (200, "hello from a\n")
    status, _ = request(mesh.refused)
    assert status == 503  # A's validator refused B's certificate: the upstream handshake failed
    # each Envoy serves exactly the SVID the daemon audited for it, over SDS
    (a_serial,) = mesh.a.cert_serials()
    (b_serial,) = mesh.b.cert_serials()
    assert same_serial(a_serial, issued_serials(mesh.daemon, A_ID))
    assert same_serial(b_serial, issued_serials(mesh.daemon, B_ID))
    assert not same_serial(b_serial, issued_serials(mesh.daemon, A_ID))


def test_rotation_reaches_both_envoys_without_restart_or_a_failed_request(mesh: Mesh) -> None:
    first_a, first_b = mesh.a.cert_serials(), mesh.b.cert_serials()
    pids = (mesh.a.proc.pid, mesh.b.proc.pid)  # type: ignore[union-attr]
    results: list[int] = []
    deadline = time.monotonic() + TTL * 1.5  # a bound, not a measurement: rotation is at ~15 s
    while time.monotonic() < deadline:
        status, _ = request(mesh.allowed)
        results.append(status)
        if mesh.a.cert_serials() != first_a and mesh.b.cert_serials() != first_b:
            break
        time.sleep(0.1)
    for _ in range(5):  # and through the new certificates
        results.append(request(mesh.allowed)[0])
    assert mesh.a.cert_serials() != first_a
    assert mesh.b.cert_serials() != first_b
    assert results == [200] * len(results)  # not one request failed across the rotation
    assert len(results) > 10
    assert (mesh.a.proc.pid, mesh.b.proc.pid) == pids  # type: ignore[union-attr]
    assert (mesh.a.starts, mesh.b.starts) == (1, 1)
    assert mesh.a.proc.poll() is None and mesh.b.proc.poll() is None  # type: ignore[union-attr]
    (b_serial,) = mesh.b.cert_serials()
    assert same_serial(b_serial, issued_serials(mesh.daemon, B_ID))


def wait_for(predicate: object, bound: float = 30) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_suspending_b_withdraws_its_certificate_and_resuming_restores_it(mesh: Mesh) -> None:
    d = mesh.daemon
    assert request(mesh.allowed)[0] == 200
    d.cli("agent", "suspend", mesh.b_entry, "--reason", "sds test")
    assert wait_for(lambda: request(mesh.allowed)[0] != 200)
    # B presents a certificate Ensign never issued (the withdrawn placeholder) ...
    (serial,) = mesh.b.cert_serials()
    assert not same_serial(serial, issued_serials(d, B_ID))
    # ... so every new connection from B fails, while A still serves
    assert [request(mesh.allowed)[0] for _ in range(3)] == [503] * 3
    assert mesh.a.proc.poll() is None and mesh.b.proc.poll() is None  # type: ignore[union-attr]
    denied = json.loads(d.cli("audit", "list", "--type", "request.denied", "-o", "json").stdout)
    assert any(r["details"].get("method") == "StreamSecrets" for r in denied)

    d.cli("agent", "resume", mesh.b_entry)
    assert wait_for(lambda: request(mesh.allowed)[0] == 200)  # Envoy reconnects with backoff
    (serial,) = mesh.b.cert_serials()
    assert same_serial(serial, issued_serials(d, B_ID))
