"""Issue 6 acceptance against the full daemon: TPM selectors on streams, swtpm outages,
measured launches in remote evidence, the sealed CA key.

TpmService is wired in wiring.py: identity/resolve.py merges the node's selectors at match time
for every service (SVIDs and token exchange alike), the attestation pipeline records measured
launches, api/attestation.py serves evidence, issuing/ca.py seals the CA key.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt as pyjwt
import pytest

from ensign.daemon.audit import read_records
from ensign.daemon.tpm.emulator import SwtpmEmulator
from ensign.proto import workload_pb2 as pb
from tests.support.cli import one_line_error
from tests.support.clients import channel, fetch_jwt, status_of, stream
from tests.support.daemon import NOBODY, Daemon, make_daemon
from tests.support.exe import sha256_of, this_exe
from tests.support.idp import CAL, Idp, exchange
from tests.support.scripts import fetch_jwt_as
from tests.support.streams import X509Stream
from tests.support.tpm import ca_files, extend_out_of_band, manufactured_tpm, needs_swtpm
from tests.support.tpm_service import zero_policy

pytestmark = [needs_swtpm, pytest.mark.timeout(90)]
__all__ = ["manufactured_tpm"]  # a fixture used by name

def _golden(root: Path) -> Path:
    """swtpm has no measured boot: PCRs 0-7 are zero until someone extends them."""
    return zero_policy(root / "golden.json")


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


def test_policy_failure_ends_streams_with_permission_denied(tpm_daemon: Daemon) -> None:
    d = tpm_daemon
    d.register("attested", "unix:uid:0", "tpm:policy:pass")
    watch = X509Stream(d.endpoint)
    try:
        assert watch.wait(lambda: watch.contexts, 10), watch.errors
        extend_out_of_band(f"swtpm:path={d.data_dir / 'tpm' / 'swtpm.sock'}", 7)
        t0 = time.monotonic()
        assert watch.wait(lambda: watch.errors, 5), "the stream did not end"
        when, err = watch.errors[0]
        assert when - t0 < 3.0  # within one quote period (1s) plus slack
        assert "PERMISSION_DENIED" in repr(err) or "no identity" in str(err), err
    finally:
        watch.close()
    code, _ = status_of(fetch_jwt, str(d.socket), "a")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "PCR 7" in json.dumps(d.audit())  # the audit record names the PCR
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
        assert len(fetch_jwt(str(d.socket), "a").svids) == 1
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
        other = fetch_jwt_as(NOBODY, d.socket, "a")
        assert other.startswith("OK "), other
        emu.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert len(fetch_jwt(str(d.socket), "a").svids) == 1
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
    mine = (this_exe(), sha256_of(this_exe()))
    assert mine in measured
    # every other entry is an `ensign` CLI run of this same interpreter, nothing else
    assert {p for p, _ in measured} == {this_exe()}


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
        assert len(fetch_jwt(str(d.socket), "a").svids) == 1
        assert b"BEGIN" not in (d.data_dir / "ca" / "state.json").read_bytes()
        d.stop()
        extend_out_of_band(emu.tcti, 7)
        d.write_config()
        result = d.cli("daemon", "--config", str(d.config_path), check=False, timeout=30)
        last = result.stderr.strip().splitlines()[-1]  # after the daemon's own log lines
        assert last.startswith("ensign: cannot unseal") and "PCR 7" in last, result.stderr
        assert result.returncode == 78, result.stderr
        # the refused start is in the trail, with its reason, and the trail still verifies
        final = list(read_records(d.data_dir / "audit"))[-1]
        assert (final["type"], final["result"]) == ("daemon.stop", "failure")
        assert final["reason"].startswith("cannot unseal the TPM-sealed key"), final
        assert d.cli("audit", "verify", "--data-dir", str(d.data_dir)).returncode == 0
    finally:
        try:
            if d is not None and d.alive():
                d.stop()
        finally:
            emu.stop()


def test_an_entry_requiring_the_tpm_policy_gets_svids_and_delegated_tokens(
        short_tmp: Path) -> None:
    """One identity decision for every service: the node's `tpm:policy:pass` is merged into the
    match for X.509-SVIDs and for token exchange alike, and withdrawn from both when the policy
    fails."""
    idp = Idp()
    d = make_daemon(short_tmp, _tpm_config(short_tmp) + idp.config(short_tmp))
    try:
        d.cli("role", "create", "assistant", "--audience", f"{CAL}*", "--scope",
              "calendar.read", "--may-act-for-users")
        agent = d.register("attested", "unix:uid:0", "tpm:policy:pass",
                           extra=("--role", "assistant"))
        with channel(d.socket) as ch:
            x509 = pb.X509SVIDResponse.FromString(next(stream(ch, "FetchX509SVID", timeout=10)))
        assert [s.spiffe_id for s in x509.svids] == [agent["spiffe_id"]]
        alice = idp.token(may_act={"sub": agent["spiffe_id"]})
        out = exchange(d, None, alice, "--audience", f"{CAL}/v1", "--scope", "calendar.read")
        assert out.returncode == 0, out.stderr
        claims = pyjwt.decode(out.stdout.strip(), options={"verify_signature": False})
        assert (claims["sub"], claims["act"]["sub"], claims["scope"]) == (
            "alice", agent["spiffe_id"], "calendar.read")
        exchanged = d.audit("--type", "token.exchanged")
        assert [(r["result"], r["agent_id"]) for r in exchanged] == [("success", agent["id"])]

        # The PCR policy fails: neither service hands out anything for this entry any more.
        extend_out_of_band(f"swtpm:path={d.data_dir / 'tpm' / 'swtpm.sock'}", 7)
        deadline = time.monotonic() + 10
        while json.loads(d.cli("tpm", "status", "-o", "json").stdout)["policy"] != "fail":
            assert time.monotonic() < deadline, "the policy failure was not noticed"
            time.sleep(0.2)
        code, _ = status_of(fetch_jwt, str(d.socket), "a")
        assert code == grpc.StatusCode.PERMISSION_DENIED
        refused = exchange(d, None, alice, "--audience", f"{CAL}/v1", "--scope",
                           "calendar.read")
        assert "not a registered, active agent" in one_line_error(refused, 77)
    finally:
        if d.alive():
            d.stop()
