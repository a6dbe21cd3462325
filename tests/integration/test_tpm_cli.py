"""`ensign tpm ...` against a real node: TpmService on an swtpm, served by AttestationApi on a
Unix socket, driven by the real CLI in subprocesses. verify-evidence runs offline."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.server import Server

from ensign.attestors.tpm import TpmConfig
from ensign.daemon.api.attestation import AttestationApi
from ensign.daemon.cli import main as cli_main
from ensign.daemon.server import Service, translated
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.policy import PcrPolicy
from ensign.daemon.tpm.service import TpmService
from ensign.proto.attestation_grpc import AttestationBase
from tests.support.tpm import data_dir, manufactured_tpm, needs_swtpm
from tests.support.tpm_synthetic import attest, ecc_public, sign

pytestmark = [needs_swtpm, pytest.mark.timeout(60)]
__all__ = ["data_dir", "manufactured_tpm"]  # fixtures used by name

ENSIGN = [sys.executable, "-m", "ensign.daemon"]
T = TypeVar("T")
EXES = {"/opt/agents/indexer": b"indexer build 7", "/opt/agents/mailer": b"mailer build 2"}


def _without_front(api: AttestationApi) -> Service:
    """The servicer bound without the daemon's front (no caller checks): these tests are about
    the evidence and the CLI, and run without a daemon."""
    def bind(method: Any) -> Any:
        return lambda stream: method(stream, None)
    proxy = SimpleNamespace(**{n: bind(getattr(api, n))
                               for n in AttestationBase.__abstractmethods__})
    return translated(AttestationBase.__mapping__(proxy))


class Node:
    """A TPM service and the Attestation API on a loop in a background thread."""

    def __init__(self, data_dir: Path) -> None:
        self.socket = data_dir / "agent.sock"
        self.service = TpmService(TpmConfig(enabled=True, emulator=True), data_dir)
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> None:
        await self.service.start()
        self.server = Server([_without_front(AttestationApi(self.service))])
        await self.server.start(path=str(self.socket))

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await self.service.aclose()

    def close(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def cli(self, *args: str, ok: bool = True, subprocess_: bool = False
            ) -> subprocess.CompletedProcess[str]:
        """`ensign tpm ARGS`: in this process (the CLI's own main(), quick), or as a real
        subprocess of the console entry point."""
        if subprocess_:
            result = subprocess.run(
                [*ENSIGN, "tpm", *args], capture_output=True, text=True, timeout=30,
                env={"SPIFFE_ENDPOINT_SOCKET": f"unix://{self.socket}", "PATH": "/usr/bin:/bin"})
        else:
            out, err = io.StringIO(), io.StringIO()
            old = os.environ.get("SPIFFE_ENDPOINT_SOCKET")
            os.environ["SPIFFE_ENDPOINT_SOCKET"] = f"unix://{self.socket}"
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        code = cli_main(["tpm", *args])
                    except SystemExit as e:  # argparse usage errors
                        code = int(e.code or 0)
            finally:
                if old is None:
                    del os.environ["SPIFFE_ENDPOINT_SOCKET"]
                else:
                    os.environ["SPIFFE_ENDPOINT_SOCKET"] = old
            result = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
        if ok:
            assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def node(data_dir: Path) -> Iterator[Node]:
    n = Node(data_dir)
    for path, image in EXES.items():  # two agent launches, as the attestation path reports them
        n.call(n.service.measure(hashlib.sha256(image).hexdigest(), path))
    yield n
    n.close()


def refuse(node: Node, *args: str) -> str:
    result = node.cli("verify-evidence", *args, ok=False)
    assert result.returncode == 65, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def test_status_policy_and_fresh_evidence_verify(node: Node, tmp_path: Path) -> None:
    out = node.cli("status", subprocess_=True).stdout  # the console entry point, for real
    assert "available           yes" in out and "chains to CN=swtpm-localca-rootca" in out
    assert "2 executables in PCR 23" in out and "PCR 23" in out
    assert re.search(r"^transient handles +0x8[0-9a-f]{7}$", out, re.M), out  # hex, no list
    status = json.loads(node.cli("status", "-o", "json", "--ak-pub-out",
                                 str(tmp_path / "ak.pem")).stdout)
    assert status["available"] and len(status["transient_handles"]) == 1
    node.cli("policy", "--out", str(tmp_path / "golden.json"))
    golden = json.loads((tmp_path / "golden.json").read_text())
    assert sorted(golden["pcrs"], key=int) == [str(i) for i in range(8)]

    nonce = secrets.token_hex(32)
    printed = node.cli("quote", "--nonce", nonce).stdout  # no --out: the evidence is printed
    (tmp_path / "ev.json").write_text(printed)
    assert json.loads(printed)["nonce"] == nonce
    result = node.cli("verify-evidence", str(tmp_path / "ev.json"), "--nonce", nonce,
                      "--ak-pub", str(tmp_path / "ak.pem"), "--policy",
                      str(tmp_path / "golden.json"), "-o", "json")
    verdict = json.loads(result.stdout)
    assert verdict["ok"] and verdict["trusted_by"] == "pinned AK"
    # exactly the executables that were attested, in order, replayed to the quoted PCR 23
    assert [(m["path"], m["sha256"]) for m in verdict["measured"]] == [
        (p, hashlib.sha256(b).hexdigest()) for p, b in EXES.items()]
    text = node.cli("verify-evidence", str(tmp_path / "ev.json"), "--nonce", nonce,
                    "--ak-pub", str(tmp_path / "ak.pem"), "--policy",
                    str(tmp_path / "golden.json")).stdout
    assert text.startswith("evidence OK") and "/opt/agents/mailer" in text


def _tamper(src: Path, dst: Path, **changes: Any) -> Path:
    doc = json.loads(src.read_text())
    for key, fn in changes.items():
        doc[key] = fn(doc[key])
    dst.write_text(json.dumps(doc))
    return dst


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def test_verify_evidence_refuses_replays_and_every_tampering(node: Node, tmp_path: Path) -> None:
    node.cli("status", "--ak-pub-out", str(tmp_path / "ak.pem"))
    node.cli("policy", "--out", str(tmp_path / "golden.json"))
    nonce = secrets.token_hex(32)
    ev = tmp_path / "ev.json"
    node.cli("quote", "--nonce", nonce, "--out", str(ev))
    trust = ["--ak-pub", str(tmp_path / "ak.pem"), "--policy", str(tmp_path / "golden.json")]

    def log_edit(log: dict[str, Any]) -> dict[str, Any]:
        log["entries"] = log["entries"][1:]  # hide the first launch
        return log

    cases = {
        "nonce mismatch": (ev, secrets.token_hex(32)),  # a replayed answer to another nonce
        "bad quote signature": (_tamper(ev, tmp_path / "q.json",
                                        quote=lambda q: _flip(q, 40)), nonce),
        "bad quote signature ": (_tamper(ev, tmp_path / "s.json",
                                         signature=lambda s: _flip(s, 10)), nonce),
        "PCR digest mismatch": (_tamper(ev, tmp_path / "p.json", pcrs=lambda p: {
            **p, "23": "00" * 32}), nonce),
        "does not replay to PCR 23": (_tamper(ev, tmp_path / "l.json",
                                              measurement_log=log_edit), nonce),
    }
    for expected, (path, n) in cases.items():
        assert expected.strip() in refuse(node, str(path), "--nonce", n, *trust)
    # golden values that this node does not meet
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(PcrPolicy.document({7: b"\x07" * 32})))
    assert "PCR policy fails: PCR 7" in refuse(node, str(ev), "--nonce", nonce, "--ak-pub",
                                               str(tmp_path / "ak.pem"), "--policy", str(bad))
    usage = node.cli("verify-evidence", str(ev), "--nonce", nonce, "--policy", str(bad), ok=False)
    assert usage.returncode == 64 and "--ak-pub" in usage.stderr


def test_ek_rooted_verification_needs_the_ak_bound_to_the_ek(
        node: Node, tmp_path: Path, manufactured_tpm: Path) -> None:
    ca = str(manufactured_tpm / "localca" / "state" / "swtpm-localca-rootca-cert.pem")
    node.cli("policy", "--out", str(tmp_path / "golden.json"))
    first = tmp_path / "first.json"
    node.cli("quote", "--nonce", secrets.token_hex(16), "--out", str(first))
    node.cli("challenge", str(first), "--ek-ca", ca, "--out", str(tmp_path / "chal.json"),
             "--secret-out", str(tmp_path / "chal.key"))
    assert (tmp_path / "chal.key").stat().st_mode & 0o777 == 0o600
    secret = (tmp_path / "chal.key").read_text().strip()
    assert len(secret) == 64 and secret not in (tmp_path / "chal.json").read_text()
    nonce = secrets.token_hex(32)
    ev = tmp_path / "ev.json"
    out = node.cli("quote", "--nonce", nonce, "--challenge", str(tmp_path / "chal.json"),
                   "--out", str(ev)).stdout
    assert "with activation proof" in out
    ek_trust = ["--ek-ca", ca, "--policy", str(tmp_path / "golden.json")]
    ok = node.cli("verify-evidence", str(ev), "--nonce", nonce, *ek_trust, "--challenge-secret",
                  str(tmp_path / "chal.key"), "--ak-pub-out", str(tmp_path / "ak.pem")).stdout
    assert "EK certificate + credential activation" in ok and "CN=swtpm-localca-rootca" in ok
    # the enrolled AK now verifies later evidence on its own
    node.cli("verify-evidence", str(ev), "--nonce", nonce, "--ak-pub", str(tmp_path / "ak.pem"),
             "--policy", str(tmp_path / "golden.json"))

    assert "not proven to be bound" in refuse(node, str(ev), "--nonce", nonce, *ek_trust)
    # A quote signed by a key outside the TPM (claiming AK attributes), beside the genuine EK
    # certificate: signature, nonce and PCR digest are all fine, the binding is not.
    doc = json.loads(ev.read_text())
    fake = ec.generate_private_key(ec.SECP256R1())
    pcrs = {int(k): bytes.fromhex(v) for k, v in doc["pcrs"].items()}
    log = doc["measurement_log"]
    body = attest(bytes.fromhex(nonce), sorted(pcrs), pcrs, reset=log["reset_count"],
                  restart=log["restart_count"])
    doc.update(ak_public=base64.b64encode(ecc_public(fake)).decode(),
               quote=base64.b64encode(body).decode(),
               signature=base64.b64encode(sign(fake, body)).decode())
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    assert ts.verify_quote(ecc_public(fake), body, sign(fake, body), bytes.fromhex(nonce),
                           {ts.ALG_SHA256: pcrs})  # a "valid" quote in itself
    assert "AK is not bound to the EK" in refuse(
        node, str(forged), "--nonce", nonce, *ek_trust, "--challenge-secret",
        str(tmp_path / "chal.key"))
    # and a challenge made for another AK does not activate on this TPM
    other = json.loads((tmp_path / "chal.json").read_text())
    other["ak_name"] = "000b" + "00" * 32
    first_doc = json.loads(first.read_text())
    first_doc["ak_public"] = base64.b64encode(ecc_public(fake)).decode()
    (tmp_path / "fake-first.json").write_text(json.dumps(first_doc))
    node.cli("challenge", str(tmp_path / "fake-first.json"), "--ek-ca", ca, "--out",
             str(tmp_path / "chal2.json"), "--secret-out", str(tmp_path / "chal2.key"))
    refused = node.cli("quote", "--nonce", nonce, "--challenge", str(tmp_path / "chal2.json"),
                       "--out", str(tmp_path / "x.json"), ok=False)
    assert refused.returncode == 64 and "does not activate on this TPM" in refused.stderr
