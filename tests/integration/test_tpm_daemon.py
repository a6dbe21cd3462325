"""Issue 6 acceptance against the full daemon: TPM selectors on streams, swtpm outages,
measured launches in remote evidence, the sealed CA key.

TpmService is wired into app.py (start/stop, events, evidence service), workload_api.py (node
selectors merged at match time), attestation.py (measured launches) and ca.py (sealing).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ensign.daemon.tpm.emulator import SwtpmEmulator
from ensign.daemon.tpm.policy import PcrPolicy
from tests.integration.test_agents import _Stream
from tests.integration.test_workload_api import _NOBODY_CLIENT
from tests.support.clients import fetch_jwt, status_of
from tests.support.daemon import NOBODY, Daemon, make_daemon, run_as
from tests.support.tpm import ca_files, extend_out_of_band, manufactured_tpm, needs_swtpm

pytestmark = [needs_swtpm, pytest.mark.timeout(90)]
__all__ = ["manufactured_tpm"]  # a fixture used by name

ZERO = bytes(32)


def _golden(root: Path) -> Path:
    """swtpm has no measured boot: PCRs 0-7 are zero until someone extends them."""
    path = root / "golden.json"
    path.write_text(json.dumps(PcrPolicy.document({i: ZERO for i in range(8)})))
    return path


def _exe() -> str:
    return os.path.realpath(f"/proc/{os.getpid()}/exe")


def _tpm_config(root: Path, **extra: str) -> str:
    lines = ["[attestors.tpm]", "enabled = true", 'quote_interval = "1s"',
             f'policy = "{_golden(root)}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    if "tcti" not in extra:
        lines.append("emulator = true")
    return "\n".join(lines) + "\n"


@pytest.fixture
def tpm_daemon(short_tmp: Path) -> Iterator[Daemon]:
    d = make_daemon(short_tmp, _tpm_config(short_tmp))
    yield d
    if d.alive():
        d.stop()


def _audit(d: Daemon) -> str:
    return d.cli("audit", "list", "-o", "json").stdout


def test_policy_failure_ends_streams_with_permission_denied(tpm_daemon: Daemon) -> None:
    d = tpm_daemon
    d.register("attested", "unix:uid:0", "tpm:policy:pass")
    stream = _Stream(d.endpoint)
    try:
        assert stream.wait(lambda: stream.contexts, 10), stream.errors
        extend_out_of_band(f"swtpm:path={d.data_dir / 'tpm' / 'swtpm.sock'}", 7)
        t0 = time.monotonic()
        assert stream.wait(lambda: stream.errors, 5), "stream did not end"
        when, err = stream.errors[0]
        assert when - t0 < 3.0  # within one quote period (1s) plus slack
        assert "PERMISSION_DENIED" in repr(err) or "no identity" in str(err), err
    finally:
        stream.close()
    code, _ = status_of(fetch_jwt, str(d.socket), "a")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    audit = _audit(d)
    assert "PCR 7" in audit  # the audit record names the PCR
    status = json.loads(d.cli("tpm", "status", "-o", "json").stdout)
    assert status["policy"] == "fail" and status["problem"].startswith("PCR policy failed: PCR 7")


def test_swtpm_outage_fails_only_tpm_identities_and_recovers(
        short_tmp: Path, manufactured_tpm: Path) -> None:
    import shutil

    emu = SwtpmEmulator(short_tmp / "ext")
    shutil.copytree(manufactured_tpm, emu.dir)
    emu.start()
    d = make_daemon(short_tmp, _tpm_config(
        short_tmp, tcti=f'"{emu.tcti}"',
        ek_ca_files="[" + ", ".join(f'"{p}"' for p in ca_files(emu.dir)) + "]"))
    try:
        d.register("on-tpm", "unix:uid:0", "tpm:policy:pass")  # this process (root)
        d.register("plain", f"unix:uid:{NOBODY}")  # another agent, no TPM selector
        assert fetch_jwt(str(d.socket), "a").svids
        status = json.loads(d.cli("status", "-o", "json").stdout)
        assert "tpm" in status["attestors"]  # the node's attestor is listed with the others
        state = status["attestor_state"]
        assert state["tpm"].startswith("ready, last quote"), state
        os.kill(emu.pid or 0, signal.SIGKILL)
        emu.reap()
        time.sleep(1.5)  # one quote period: the daemon notices
        code, details = status_of(fetch_jwt, str(d.socket), "a")
        assert code == grpc.StatusCode.UNAVAILABLE, details
        # the operator sees which attestor is down, and why
        state = json.loads(d.cli("status", "-o", "json").stdout)["attestor_state"]
        assert state["tpm"].startswith("unavailable: "), state
        other = run_as(NOBODY, _NOBODY_CLIENT, str(d.socket), "a")
        assert other.stdout.startswith("OK"), other.stdout + other.stderr
        emu.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert fetch_jwt(str(d.socket), "a").svids
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "TPM identities did not come back"
                time.sleep(0.2)
    finally:
        try:
            if d.alive():
                d.stop()
        finally:
            emu.stop()


def test_remote_evidence_lists_exactly_the_attested_executables(
        tpm_daemon: Daemon, tmp_path: Path) -> None:
    d = tpm_daemon
    d.register("me", "unix:uid:0")
    fetch_jwt(str(d.socket), "a")  # attests this process: its executable is measured
    nonce = secrets.token_hex(32)
    d.cli("tpm", "status", "--ak-pub-out", str(tmp_path / "ak.pem"))
    d.cli("tpm", "quote", "--nonce", nonce, "--out", str(tmp_path / "ev.json"))
    verdict = json.loads(d.cli(
        "tpm", "verify-evidence", str(tmp_path / "ev.json"), "--nonce", nonce, "--ak-pub",
        str(tmp_path / "ak.pem"), "--policy", str(_golden(d.root)), "-o", "json").stdout)
    measured = {(m["path"], m["sha256"]) for m in verdict["measured"]}
    mine = (_exe(), hashlib.sha256(Path(_exe()).read_bytes()).hexdigest())
    assert mine in measured
    # every other entry is an `ensign` CLI run of this same interpreter, nothing else
    assert {p for p, _ in measured} == {_exe()}


def test_sealed_ca_key_refuses_to_issue_after_a_pcr_change(
        short_tmp: Path, manufactured_tpm: Path) -> None:
    import shutil

    emu = SwtpmEmulator(short_tmp / "ext")
    shutil.copytree(manufactured_tpm, emu.dir)
    emu.start()
    config = _tpm_config(short_tmp, tcti=f'"{emu.tcti}"') + "\n[ca]\nseal_with_tpm = true\n"
    d: Daemon | None = None
    try:
        d = make_daemon(short_tmp, config)
        d.register("me", "unix:uid:0")
        assert fetch_jwt(str(d.socket), "a").svids
        assert b"BEGIN" not in (d.data_dir / "ca" / "state.json").read_bytes()
        d.stop()
        extend_out_of_band(emu.tcti, 7)
        d.write_config()
        result = d.cli("daemon", "--config", str(d.config_path), check=False, timeout=30)
        assert result.returncode != 0
        assert "cannot unseal" in result.stderr and "PCR 7" in result.stderr
    finally:
        try:
            if d is not None and d.alive():
                d.stop()
        finally:
            emu.stop()
