"""`ensign verify-artifact` as CI uses it in 2026: Rekor v2 bundles, cosign's flags (`--key`,
`--certificate-identity-regexp` as a search, an artifact given as `sha256:<hex>`), a
ClientTrustConfig as the root, and one line on stderr with the documented exit code for every
failure (65 a named check, 64 usage, 66 a missing file), never a traceback.

Most cases run the CLI's `main()` in this process (the same code the console script runs);
the ones that printed a traceback before run the installed `ensign` as a subprocess.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon.cli import main
from tests.support.daemon import REPO
from tests.support.sigstore import GHA, PrivateSigstore

IDENTITY = "https://github.com/acme/agent/.github/workflows/release.yml@refs/tags/v1.2.3"
SHARED = REPO.parent / "shared" / "sigstore-assets"


def cli(*args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["verify-artifact", *map(str, args)])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def failed(code: int, err: str, expected: int) -> str:
    """Assert a one-line refusal with `expected` exit code; return the line."""
    assert code == expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def fulcio() -> PrivateSigstore:
    return PrivateSigstore()


@pytest.fixture
def setup(tmp_path: Path, fulcio: PrivateSigstore) -> dict[str, Path]:
    root = tmp_path / "trusted_root.json"
    root.write_text(json.dumps(fulcio.trusted_root()))
    art = tmp_path / "agent"
    art.write_bytes(b"\x7fELF agent build\n" * 100)
    return {"root": root, "art": art, "dir": tmp_path}


def _bundle(setup: dict[str, Path], doc: dict[str, Any], name: str = "b.json") -> Path:
    path = setup["dir"] / name
    path.write_text(json.dumps(doc))
    return path


def test_rekor_v2_bundles_verify_with_their_signed_time(
    setup: dict[str, Path], fulcio: PrivateSigstore
) -> None:
    data = setup["art"].read_bytes()
    for doc, entry in ((fulcio.sign(data, IDENTITY, rekor="v2", witnesses=2),
                        "hashedrekord/0.0.2"),
                       (fulcio.attest(data, "agent", IDENTITY, "b", rekor="v2"),
                        "hashedrekord/0.0.2"),
                       (fulcio.attest(data, "agent", IDENTITY, "b", rekor="v2", entry="dsse"),
                        "dsse/0.0.2")):
        code, out, err = cli(setup["art"], "--bundle", _bundle(setup, doc), "--trusted-root",
                             setup["root"], "--cert-identity", IDENTITY, "--cert-oidc-issuer",
                             GHA, "-o", "json")
        assert code == 0, err
        result = json.loads(out)
        assert (result["signer"], result["log_entry"], result["time_source"]) == (
            IDENTITY, entry, "timestamp-authority")
        assert result["signed_time"].startswith("20") and result["signed_time"].endswith("Z")


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/sigstore-assets absent")
def test_real_rekor_v2_bundle_through_the_console_script() -> None:
    """Printed `TypeError ... NoneType` (integrated_time) before."""
    s = SHARED / "sigstore-python"
    ok = subprocess.run(
        [sys.executable, "-m", "ensign.daemon", "verify-artifact", s / "staging-rekor-v2.txt",
         "--cert-identity", "jku@goto.fi", "--cert-oidc-issuer", "https://github.com/login/oauth",
         "--trusted-root", SHARED / "trusted_roots" / "staging.trusted_root.json"],
        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "signed 2025-06-09T11:57:38Z (timestamp-authority)" in ok.stdout


def test_invalid_regexp_is_a_usage_error_without_traceback(
    setup: dict[str, Path], fulcio: PrivateSigstore
) -> None:
    """Printed a `re.error` traceback before."""
    setup["art"].with_name("agent.sigstore.json").write_text(
        json.dumps(fulcio.sign(setup["art"].read_bytes(), IDENTITY)))
    proc = subprocess.run(
        [sys.executable, "-m", "ensign.daemon", "verify-artifact", setup["art"],
         "--cert-identity-regexp", "([", "--cert-oidc-issuer", GHA],
        capture_output=True, text=True)
    line = failed(proc.returncode, proc.stderr, 64)
    assert "--cert-identity-regexp: invalid regular expression" in line
    code, _, err = cli(setup["art"], "--cert-identity", IDENTITY,
                       "--cert-oidc-issuer-regexp", "*")
    assert "--cert-oidc-issuer-regexp: invalid regular expression" in failed(code, err, 64)


def test_identity_regexp_is_a_search_as_in_cosign(
    setup: dict[str, Path], fulcio: PrivateSigstore
) -> None:
    bundle = _bundle(setup, fulcio.sign(setup["art"].read_bytes(), IDENTITY, rekor="v2"))
    common = ("--bundle", bundle, "--trusted-root", setup["root"])
    for pattern in (r"github\.com/acme/agent/", r"@refs/tags/v1\.", r"^https://github\.com/acme/"):
        code, _, err = cli(setup["art"], *common, "--certificate-identity-regexp", pattern,
                           "--certificate-oidc-issuer", GHA)
        assert code == 0, (pattern, err)
    for pattern in (r"^github\.com/acme/", r"mallory", r"v1\.2\.3$x"):
        code, _, err = cli(setup["art"], *common, "--cert-identity-regexp", pattern,
                           "--cert-oidc-issuer", GHA)
        assert "verification failed at identity" in failed(code, err, 65)
    code, _, err = cli(setup["art"], *common, "--cert-identity", IDENTITY,
                       "--cert-oidc-issuer-regexp", r"token\.actions\.githubusercontent")
    assert code == 0, err
    code, _, err = cli(setup["art"], *common, "--cert-identity", IDENTITY,
                       "--cert-oidc-issuer-regexp", r"accounts\.google")
    assert "verification failed at issuer" in failed(code, err, 65)


def test_managed_key_bundles_as_cosign_users_verify_them(
    setup: dict[str, Path], fulcio: PrivateSigstore
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = setup["dir"] / "cosign.pub"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    data = setup["art"].read_bytes()
    for rekor in ("v1", "v2"):
        bundle = _bundle(setup, fulcio.sign_with_key(data, key, rekor=rekor), f"k{rekor}.json")
        code, out, err = cli(setup["art"], "--bundle", bundle, "--key", pub, "--trusted-root",
                             setup["root"], "-o", "json")  # no --cert-oidc-issuer needed
        assert code == 0, err
        digest = hashlib.sha256(key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        assert json.loads(out)["signer"] == f"key sha256:{digest.hexdigest()}"
    code, _, err = cli(setup["art"], "--bundle", bundle, "--key", pub, "--cert-identity",
                       IDENTITY, "--trusted-root", setup["root"])
    assert "--key" in failed(code, err, 64)
    code, _, err = cli(setup["art"], "--bundle", bundle, "--cert-identity", IDENTITY,
                       "--cert-oidc-issuer", GHA, "--trusted-root", setup["root"])
    assert "signed with a key" in failed(code, err, 65)
    other = setup["dir"] / "other.pub"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, _, err = cli(setup["art"], "--bundle", bundle, "--key", other, "--trusted-root",
                       setup["root"])
    assert "verification failed at artifact-digest" in failed(code, err, 65)
    not_a_key = setup["dir"] / "garbage.pub"
    not_a_key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    code, _, err = cli(setup["art"], "--bundle", bundle, "--key", not_a_key, "--trusted-root",
                       setup["root"])
    assert "verification failed at key" in failed(code, err, 65)


def test_artifact_given_as_a_digest(setup: dict[str, Path], fulcio: PrivateSigstore) -> None:
    data = setup["art"].read_bytes()
    bundle = _bundle(setup, fulcio.sign(data, IDENTITY, rekor="v2"))
    flags = ("--trusted-root", setup["root"], "--cert-identity", IDENTITY,
             "--cert-oidc-issuer", GHA)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    code, out, err = cli(digest, "--bundle", bundle, *flags)
    assert code == 0 and out.startswith(f"OK: {digest} signed by {IDENTITY}"), err
    code, _, err = cli(digest.upper().replace("SHA256:", "sha256:"), "--bundle", bundle, *flags)
    assert code == 0, err
    wrong = "sha256:" + hashlib.sha256(data + b"!").hexdigest()
    code, _, err = cli(wrong, "--bundle", bundle, *flags)
    assert "verification failed at artifact-digest" in failed(code, err, 65)
    code, _, err = cli(digest, *flags)
    assert "needs --bundle" in failed(code, err, 64)
    code, _, err = cli("sha256:abc", "--bundle", bundle, *flags)  # not a digest: a file name
    assert "cannot read sha256:abc" in failed(code, err, 66)


def test_client_trust_config_root_and_help_names_the_default(
    setup: dict[str, Path], fulcio: PrivateSigstore
) -> None:
    config = setup["dir"] / "trust_config.json"
    config.write_text(json.dumps(fulcio.client_trust_config()))
    bundle = _bundle(setup, fulcio.sign(setup["art"].read_bytes(), IDENTITY, rekor="v2"))
    for flag in ("--trusted-root", "--trust-config"):
        code, _, err = cli(setup["art"], "--bundle", bundle, flag, config, "--cert-identity",
                           IDENTITY, "--cert-oidc-issuer", GHA)
        assert code == 0, err
    code, out, _ = cli("--help")
    text = " ".join(out.split())
    assert code == 0
    assert "/etc/ensign/sigstore/trusted_root.json" in text
    assert "Sigstore public-good production root" in text and "ClientTrustConfig" in text


def test_missing_files_exit_66_and_usage_exits_64(
    setup: dict[str, Path], fulcio: PrivateSigstore
) -> None:
    bundle = _bundle(setup, fulcio.sign(setup["art"].read_bytes(), IDENTITY))
    flags = ("--cert-identity", IDENTITY, "--cert-oidc-issuer", GHA)
    missing = setup["dir"] / "missing"
    for args in ((missing, "--bundle", bundle, *flags),
                 (setup["art"], "--bundle", missing, *flags),
                 (setup["art"], *flags),  # no bundle beside it
                 (setup["art"], "--bundle", bundle, "--trusted-root", missing, *flags),
                 (setup["art"], "--bundle", bundle, "--key", missing)):
        code, _, err = cli(*args)
        failed(code, err, 66)
    for args in ((setup["art"], "--bundle", bundle, "--cert-oidc-issuer", GHA),
                 (setup["art"], "--bundle", bundle, "--cert-identity", IDENTITY),
                 (setup["art"], "--bundle", bundle, "--cert-identity", IDENTITY,
                  "--cert-identity-regexp", ".", "--cert-oidc-issuer", GHA),
                 ("a\0b", *flags)):
        code, _, err = cli(*args)
        failed(code, err, 64)
