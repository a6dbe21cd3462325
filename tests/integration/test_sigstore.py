"""Sigstore attestation of agent builds, against a private trust root, and verify-artifact."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import REPO, Daemon, make_daemon
from tests.support.exe import copy_exe, run_exe
from tests.support.exe import tampered as tampered_bytes
from tests.support.sigstore import GHA, OID_REPOSITORY, SCT_LEAF_INDEX, PrivateSigstore

IDENTITY = "https://github.com/acme/agent/.github/workflows/release.yml@refs/tags/v1.2.3"
OTHER = "https://github.com/mallory/agent/.github/workflows/release.yml@refs/tags/v6.6.6"
SHARED = REPO.parent / "shared" / "sigstore-assets"


@pytest.fixture(scope="module")
def fulcio() -> PrivateSigstore:
    return PrivateSigstore()


def _sigstore_daemon(
    root: Path, fulcio: PrivateSigstore, trusted_root: bytes | None = None
) -> Daemon:
    (root / "bundles").mkdir(exist_ok=True)
    tr = root / "trusted_root.json"
    tr.write_bytes(
        trusted_root if trusted_root is not None else json.dumps(fulcio.trusted_root()).encode()
    )
    return make_daemon(
        root,
        "[attestors.sigstore]\nenabled = true\n"
        f'trusted_root = "{tr}"\nbundle_dirs = ["{root / "bundles"}"]\n',
    )


def _evidence_of(d: Daemon, pid_hint: str = "") -> list[dict[str, Any]]:
    out = d.cli("audit", "list", "--type", "attestation", "-o", "json").stdout
    return [r["details"]["evidence"] for r in json.loads(out)]


def test_signed_binary_gets_an_identity_and_variants_do_not(
    short_tmp: Path, fulcio: PrivateSigstore
) -> None:
    d = _sigstore_daemon(short_tmp, fulcio)
    try:
        d.register(
            "signed-agent", "unix:uid:0", f"sigstore:identity:{IDENTITY}", f"sigstore:issuer:{GHA}"
        )
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        signed = copy_exe(bins / "agent")
        data = signed.read_bytes()
        (bins / "agent.sigstore.json").write_text(
            json.dumps(
                fulcio.sign(data, IDENTITY, extra={OID_REPOSITORY: "https://github.com/acme/agent"})
            )
        )
        unsigned = copy_exe(bins / "agent-unsigned")
        tampered = bins / "agent-tampered"
        tampered.write_bytes(tampered_bytes(data))
        tampered.chmod(0o755)
        shutil.copy(bins / "agent.sigstore.json", bins / "agent-tampered.sigstore.json")
        other = copy_exe(bins / "agent-other")
        (bins / "agent-other.sigstore.json").write_text(json.dumps(fulcio.sign(data, OTHER)))
        wrong = copy_exe(bins / "agent-wrongbundle")
        (bins / "agent-wrongbundle.sigstore.json").write_text(
            json.dumps(fulcio.sign(b"some other build", IDENTITY))
        )

        assert run_exe(signed, d) == "ISSUED"
        for exe in (unsigned, tampered, other, wrong):
            assert run_exe(exe, d) == "REFUSED PERMISSION_DENIED", exe.name
        evidence = _evidence_of(d)
        by_path = {e.get("unix.exe_path"): e for e in evidence}
        assert "no Sigstore bundle" in by_path[str(unsigned)]["sigstore.error"]
        assert by_path[str(tampered)]["sigstore.failed_check"] == "artifact-digest"
        assert by_path[str(wrong)]["sigstore.failed_check"] == "artifact-digest"
        assert by_path[str(other)]["sigstore.signer"] == OTHER  # verified, wrong signer
        assert by_path[str(signed)]["sigstore.signer"] == IDENTITY
        denials = d.audit("--type", "request.denied")
        assert len(denials) == 4 and all("sigstore" in json.dumps(r) for r in denials), denials
        assert d.alive()
    finally:
        d.stop()


def test_rekor_v2_builds_get_identities_offline(short_tmp: Path, fulcio: PrivateSigstore) -> None:
    """What signers produce since the production root lists a Rekor v2 log: entries without
    an integrated time (time from an RFC 3161 timestamp), checkpoints with witness
    cosignatures, SCTs with extensions, DSSE provenance logged as dsse/0.0.2; the trust root
    given as a ClientTrustConfig. Crashed the attestor (integrated_time None) before."""
    (short_tmp / "bundles").mkdir()
    config = short_tmp / "trust_config.json"
    config.write_text(json.dumps(fulcio.client_trust_config()))
    d = make_daemon(
        short_tmp,
        "[attestors.sigstore]\nenabled = true\n"
        f'trusted_root = "{config}"\nbundle_dirs = ["{short_tmp / "bundles"}"]\n',
    )
    try:
        d.register("v2-agent", "unix:uid:0", f"sigstore:identity:{IDENTITY}",
                   "sigstore:repository:https://github.com/acme/agent")
        d.register("provenance-agent", "unix:uid:0",
                   "sigstore:builder:https://github.com/actions/runner")
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        signed = copy_exe(bins / "agent")
        data = signed.read_bytes()
        (bins / "agent.sigstore.json").write_text(json.dumps(fulcio.sign(
            data, IDENTITY, extra={OID_REPOSITORY: "https://github.com/acme/agent"},
            rekor="v2", witnesses=2, sct_extensions=SCT_LEAF_INDEX, embed_tsa_cert=False)))
        built = copy_exe(bins / "built")
        built.write_bytes(data + b"\0")  # another build: its own digest
        built.chmod(0o755)
        digest = hashlib.sha256(built.read_bytes()).hexdigest()
        (short_tmp / "bundles" / f"{digest}.sigstore.json").write_text(json.dumps(fulcio.attest(
            built.read_bytes(), "built", OTHER, "https://github.com/actions/runner",
            rekor="v2", entry="dsse")))
        tampered = bins / "tampered"
        tampered.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
        tampered.chmod(0o755)
        shutil.copy(bins / "agent.sigstore.json", bins / "tampered.sigstore.json")

        assert run_exe(signed, d) == "ISSUED"
        assert run_exe(built, d) == "ISSUED"
        assert run_exe(tampered, d) == "REFUSED PERMISSION_DENIED"
        by_path = {e.get("unix.exe_path"): e for e in _evidence_of(d)}
        assert by_path[str(signed)]["sigstore.signer"] == IDENTITY
        assert by_path[str(built)]["sigstore.signer"] == OTHER
        assert by_path[str(tampered)]["sigstore.failed_check"] == "artifact-digest"
        assert d.alive()
    finally:
        d.stop()


# -- scripts: the launcher's rules, piece by piece (the attacks: hardening/test_signed_scripts)


def test_bad_bundle_and_bad_trusted_root_are_clear_and_daemon_serves(
    short_tmp: Path, fulcio: PrivateSigstore
) -> None:
    d = _sigstore_daemon(short_tmp, fulcio, trusted_root=b"{not json")
    try:
        d.register("needs-sig", "unix:uid:0", f"sigstore:identity:{IDENTITY}")
        d.register("plain", "unix:uid:0", "unix:gid:0")
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        exe = copy_exe(bins / "agent")
        (bins / "agent.sigstore.json").write_text("{malformed")
        assert run_exe(exe, d) == "ISSUED"  # via the plain entry; sigstore gave nothing
        evidence = [e for e in _evidence_of(d) if e.get("unix.exe_path") == str(exe)]
        assert "trusted-root: cannot load" in evidence[0]["sigstore.error"]
    finally:
        d.stop()
    second = short_tmp / "second"
    second.mkdir(mode=0o755)
    d2 = _sigstore_daemon(second, fulcio)
    try:
        d2.register("needs-sig", "unix:uid:0", f"sigstore:identity:{IDENTITY}")
        assert run_exe(exe, d2) == "REFUSED PERMISSION_DENIED"
        evidence = [e for e in _evidence_of(d2) if e.get("unix.exe_path") == str(exe)]
        assert evidence[0]["sigstore.failed_check"] == "bundle"
        assert d2.alive()
    finally:
        d2.stop()


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ensign.daemon", "verify-artifact", *args],
        capture_output=True,
        text=True,
    )


def test_verify_artifact_private_root_and_provenance(
    tmp_path: Path, fulcio: PrivateSigstore
) -> None:
    root = tmp_path / "root.json"
    root.write_text(json.dumps(fulcio.trusted_root()))
    art = tmp_path / "agent.tar"
    art.write_bytes(os.urandom(4096))
    (tmp_path / "agent.tar.sigstore.json").write_text(
        json.dumps(fulcio.sign(art.read_bytes(), IDENTITY))
    )
    ok = _verify(
        str(art),
        "--trusted-root",
        str(root),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
        "-o",
        "json",
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signer"] == IDENTITY
    regexp = _verify(
        str(art),
        "--trusted-root",
        str(root),
        "--cert-identity-regexp",
        r"https://github\.com/acme/agent/.*@refs/tags/v.*",
        "--cert-oidc-issuer",
        GHA,
    )
    assert regexp.returncode == 0, regexp.stderr
    no_prov = _verify(
        str(art),
        "--trusted-root",
        str(root),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
        "--provenance",
    )
    assert no_prov.returncode == 65 and "provenance" in no_prov.stderr
    prov = tmp_path / "prov.json"
    prov.write_text(
        json.dumps(
            fulcio.attest(
                art.read_bytes(), "agent.tar", IDENTITY, "https://github.com/actions/runner"
            )
        )
    )
    ok = _verify(
        str(art),
        "--bundle",
        str(prov),
        "--trusted-root",
        str(root),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
        "--provenance",
        "-o",
        "json",
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["builder"] == "https://github.com/actions/runner"
    other = tmp_path / "other.bin"
    other.write_bytes(b"other")
    wrong = _verify(
        str(other),
        "--bundle",
        str(prov),
        "--trusted-root",
        str(root),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
    )
    assert wrong.returncode == 65 and "attestation-subject" in wrong.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("[]")
    bad_root = _verify(
        str(art),
        "--trusted-root",
        str(garbage),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        GHA,
    )
    assert bad_root.returncode == 65 and "trusted-root" in bad_root.stderr
    assert len(bad_root.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/sigstore-assets not present")
@pytest.mark.parametrize(
    ("variant", "identity", "issuer", "ok"),
    [
        (
            "good",
            "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml"
            "@refs/tags/v0.1.2",
            GHA,
            True,
        ),
        (
            "tampered",
            "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml"
            "@refs/tags/v0.1.2",
            GHA,
            False,
        ),
        (
            "good",
            "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml"
            "@refs/tags/v9.9.9",
            GHA,
            False,
        ),
        (
            "good",
            "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml"
            "@refs/tags/v0.1.2",
            "https://accounts.google.com",
            False,
        ),
    ],
    ids=["accepts", "tampered", "wrong-identity", "wrong-issuer"],
)
def test_verify_artifact_real_production_bundle(
    tmp_path: Path, variant: str, identity: str, issuer: str, ok: bool
) -> None:
    src = SHARED / "sigstore-python" / "bundle_v3_github.whl"
    art = tmp_path / src.name
    data = src.read_bytes()
    art.write_bytes(data if variant == "good" else data[:100] + bytes([data[100] ^ 1]) + data[101:])
    result = _verify(
        str(art),
        "--bundle",
        str(src) + ".sigstore",
        "--cert-identity",
        identity,
        "--cert-oidc-issuer",
        issuer,
    )
    assert (result.returncode == 0) is ok, result.stderr
    if not ok:
        assert result.returncode == 65 and "verification failed at" in result.stderr
