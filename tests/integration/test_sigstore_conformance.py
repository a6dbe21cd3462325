"""Sigstore client conformance: `ensign verify-artifact` against the sigstore-python library it
builds on, on the same public cases (tests/data/sigstore-conformance, see its README), in the
same run. Target: at least as many cases decided right as the library, and no case that must
fail accepted. Both scores are printed.

The library is driven as its own CLI drives it: `Verifier(trusted_root=...)`, an `Identity`
policy, `verify_artifact` for message signatures, `verify_dsse` plus the in-toto type and
subject checks for envelopes. It has no API for managed-key bundles, so those count as
"not verified" for it (right for the cases that must fail, wrong for the others).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from ensign.daemon.cli import main
from ensign.daemon.cli.verify_cmd import production_root
from tests.support.daemon import REPO

CASES = REPO / "tests" / "data" / "sigstore-conformance" / "bundle-verify"
IDENTITY = ("https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
            ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main")
ISSUER = "https://token.actions.githubusercontent.com"
STAGING = production_root().parent.parent / "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev" \
    / "trusted_root.json"


@dataclass(frozen=True)
class Case:
    name: str
    bundle: Path
    artifact: Path
    root: Path
    key: Path | None
    must_pass: bool


def cases() -> list[Case]:
    found = []
    for d in sorted(p for p in CASES.iterdir() if p.is_dir()):
        own_root = d / "trusted_root.json"
        root = own_root if own_root.exists() else (
            STAGING if d.name.startswith("rekor2-") else production_root())
        found.append(Case(
            name=d.name, bundle=d / "bundle.sigstore.json",
            artifact=d / "artifact" if (d / "artifact").exists() else CASES / "a.txt",
            root=root, key=d / "key.pub" if (d / "key.pub").exists() else None,
            must_pass=not d.name.endswith("_fail")))
    return found


def ensign_accepts(case: Case) -> bool:
    flags = ["--key", str(case.key)] if case.key else [
        "--certificate-identity", IDENTITY, "--certificate-oidc-issuer", ISSUER]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["verify-artifact", str(case.artifact), "--bundle", str(case.bundle),
                     "--trusted-root", str(case.root), *flags])
    assert code in (0, 65), (case.name, err.getvalue())
    assert len(err.getvalue().strip().splitlines()) == (code != 0), err.getvalue()
    return code == 0


def library_accepts(case: Case) -> bool:
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity

    if case.key is not None:
        return False  # sigstore-python verifies certificate bundles only
    data = case.artifact.read_bytes()
    try:
        verifier = Verifier(trusted_root=TrustedRoot.from_file(str(case.root)))
        bundle = Bundle.from_json(case.bundle.read_bytes())
        policy = Identity(identity=IDENTITY, issuer=ISSUER)
        if bundle._inner.dsse_envelope is None:
            verifier.verify_artifact(data, bundle, policy)
            return True
        payload_type, payload = verifier.verify_dsse(bundle, policy)
        statement = json.loads(payload)
        digest = hashlib.sha256(data).hexdigest()
        return payload_type == "application/vnd.in-toto+json" and statement.get("_type") in (
            "https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1") and any(
            s.get("digest", {}).get("sha256") == digest for s in statement.get("subject", []))
    except Exception:
        return False


def test_cases_are_the_vendored_ones() -> None:
    found = cases()
    assert len(found) == 10
    assert sum(c.must_pass for c in found) == 3
    assert STAGING.exists() and production_root().exists()
    # the reconstructed default artifact is the one the cases were signed over
    statement = json.loads(base64.b64decode(json.loads(
        (CASES / "rekor2-dsse-happy-path" / "bundle.sigstore.json").read_text())[
        "dsseEnvelope"]["payload"]))
    assert statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(
        (CASES / "a.txt").read_bytes()).hexdigest()


def test_ensign_decides_at_least_as_many_cases_right_and_accepts_none_that_must_fail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.getLogger("sigstore").setLevel(logging.CRITICAL)
    rows = []
    for case in cases():
        rows.append((case, ensign_accepts(case), library_accepts(case)))
    ours = sum(accepted == case.must_pass for case, accepted, _ in rows)
    theirs = sum(accepted == case.must_pass for case, _, accepted in rows)
    report = [f"sigstore conformance ({len(rows)} cases): ensign verify-artifact {ours}/"
              f"{len(rows)}, sigstore-python {theirs}/{len(rows)}"]
    for case, a, b in rows:
        want = "pass" if case.must_pass else "fail"
        report.append(f"  {case.name:62} want {want}  ensign {'pass' if a else 'fail'}  "
                      f"sigstore-python {'pass' if b else 'fail'}")
    with capsys.disabled():
        print("\n" + "\n".join(report))
    accepted_bad = [case.name for case, a, _ in rows if a and not case.must_pass]
    assert not accepted_bad, report
    assert ours >= theirs, report
    assert ours == len(rows), report  # today every vendored case is decided right
