"""Offline Sigstore verification (shared by the sigstore attestor and `ensign verify-artifact`)
on what signers produce in 2026: Rekor v2 entries (hashedrekord and DSSE, time from RFC 3161
timestamps with and without an embedded TSA certificate, checkpoints with witness
cosignatures), SCT extensions, managed-key bundles, ClientTrustConfig roots. Private material
from tests/support/sigstore.py, and real bundles from ../shared/sigstore-assets when present.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.attestors import (
    CheckFailed,
    SigstoreAttestor,
    Verified,
    identity_policy,
    load_sigstore_trust,
    verify_sigstore_bundle,
)
from ensign.attestors.sigstore import SigstoreConfig
from tests.support.daemon import REPO
from tests.support.sigstore import GHA, OID_REPOSITORY, SCT_LEAF_INDEX, PrivateSigstore, b64

IDENTITY = "https://github.com/acme/agent/.github/workflows/release.yml@refs/tags/v1.2.3"
DATA = b"agent build 1.2.3\n" * 64
SHA = hashlib.sha256(DATA).hexdigest()
SHARED = REPO.parent / "shared" / "sigstore-assets"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/sigstore-assets absent")


@pytest.fixture(scope="module")
def fulcio() -> PrivateSigstore:
    return PrivateSigstore()


@pytest.fixture(scope="module")
def trust(fulcio: PrivateSigstore, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("root") / "trusted_root.json"
    path.write_text(json.dumps(fulcio.trusted_root()))
    return load_sigstore_trust(path)


def _verify(trust: Any, bundle: dict[str, Any] | bytes, sha: str = SHA, **kw: Any) -> Verified:
    raw = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
    return verify_sigstore_bundle(trust, raw, sha, **kw)


def _fails(trust: Any, bundle: dict[str, Any] | bytes, sha: str = SHA, **kw: Any) -> CheckFailed:
    with pytest.raises(CheckFailed) as e:
        _verify(trust, bundle, sha, **kw)
    assert "\n" not in str(e.value)
    return e.value


# -- Rekor v2, signed timestamps, checkpoints, SCT extensions --------------------------------

@pytest.mark.parametrize("embed", [True, False], ids=["tsa-cert-embedded", "tsa-cert-absent"])
def test_rekor_v2_message_signature_time_from_signed_timestamp(
    trust: Any, fulcio: PrivateSigstore, embed: bool
) -> None:
    bundle = fulcio.sign(DATA, IDENTITY, extra={OID_REPOSITORY: "https://github.com/acme/agent"},
                         rekor="v2", embed_tsa_cert=embed)
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    assert "integratedTime" not in entry and "inclusionPromise" not in entry
    got = _verify(trust, bundle)
    assert (got.identity, got.issuer) == (IDENTITY, GHA)
    assert got.facts == {"repository": "https://github.com/acme/agent"}
    assert got.log_entry == "hashedrekord/0.0.2"
    assert got.time_source == "timestamp-authority"
    assert got.signed_time is not None
    assert abs((dt.datetime.now(dt.UTC) - got.signed_time).total_seconds()) < 600


def test_rekor_v2_checkpoint_with_witness_cosignatures_and_sct_extensions(
    trust: Any, fulcio: PrivateSigstore
) -> None:
    bundle = fulcio.sign(DATA, IDENTITY, rekor="v2", witnesses=3, sct_extensions=SCT_LEAF_INDEX)
    envelope = bundle["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
    assert envelope["envelope"].count("\u2014") == 4
    assert _verify(trust, bundle).identity == IDENTITY


def test_rekor_v2_checkpoint_signed_only_by_witnesses_is_refused(
    trust: Any, fulcio: PrivateSigstore
) -> None:
    bundle = fulcio.sign(DATA, IDENTITY, rekor="v2", witnesses=2)
    cp = bundle["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
    cp["envelope"] = "".join(line + "\n" for line in cp["envelope"].splitlines()
                             if "rekor-v2.test.invalid" not in line or "\u2014" not in line)
    assert _fails(trust, bundle).check == "transparency-log"


def test_rekor_v2_without_signed_time_or_with_unknown_tsa_is_refused(
    trust: Any, fulcio: PrivateSigstore
) -> None:
    no_time = fulcio.sign(DATA, IDENTITY, rekor="v2", timestamp=False)
    assert _fails(trust, no_time).check == "bundle"  # no promise, no timestamp: unparseable
    other = PrivateSigstore()
    foreign = fulcio.sign(DATA, IDENTITY, rekor="v2")
    token = other.tsa.timestamp(base64.b64decode(foreign["messageSignature"]["signature"]),
                                dt.datetime.now(dt.UTC))
    foreign["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"] = [
        {"signedTimestamp": b64(token)}]
    assert _fails(trust, foreign).check == "signed-time"


def test_rekor_v2_entry_of_another_signature_is_refused(
    trust: Any, fulcio: PrivateSigstore
) -> None:
    mine = fulcio.sign(DATA, IDENTITY, rekor="v2")
    theirs = fulcio.sign(DATA, IDENTITY, rekor="v2")
    mine["verificationMaterial"]["tlogEntries"] = theirs["verificationMaterial"]["tlogEntries"]
    assert _fails(trust, mine).check in {"transparency-log", "certificate-chain"}


def test_rekor_v2_tampered_artifact_and_wrong_signer(trust: Any, fulcio: PrivateSigstore) -> None:
    bundle = fulcio.sign(DATA, IDENTITY, rekor="v2")
    assert _fails(trust, bundle, hashlib.sha256(DATA + b"x").hexdigest()).check == (
        "artifact-digest")
    policy = identity_policy("https://github.com/mallory/x", None, GHA)
    assert _fails(trust, bundle, policy=policy).check == "identity"


@pytest.mark.parametrize(("rekor", "entry", "kind"), [
    ("v2", "hashedrekord", "hashedrekord/0.0.2"),  # what sigstore-python signs on Rekor v2
    ("v2", "dsse", "dsse/0.0.2"),  # what Rekor v2 also accepts; checked here, not upstream
    ("v1", "dsse", "dsse/0.0.1"),
    ("v1", "hashedrekord", "hashedrekord/0.0.1"),  # hashedrekord over the PAE on Rekor v1
])
def test_dsse_provenance_on_every_entry_kind(
    trust: Any, fulcio: PrivateSigstore, rekor: str, entry: str, kind: str
) -> None:
    bundle = fulcio.attest(DATA, "agent", IDENTITY, "https://github.com/actions/runner",
                           rekor=rekor, entry=entry)
    got = _verify(trust, bundle, require_provenance=True)
    assert (got.kind, got.log_entry, got.identity) == ("dsse", kind, IDENTITY)
    assert got.builder_id == "https://github.com/actions/runner"
    assert _fails(trust, bundle, hashlib.sha256(b"other").hexdigest()).check == (
        "attestation-subject")


@pytest.mark.parametrize(("rekor", "entry"), [("v2", "dsse"), ("v1", "hashedrekord")])
def test_dsse_envelope_not_the_logged_one_is_refused(
    trust: Any, fulcio: PrivateSigstore, rekor: str, entry: str
) -> None:
    """The entry kinds checked here (not by sigstore-python) hold the envelope to the log: an
    envelope (with its certificate and timestamps) that is valid on its own but not the one
    logged, or a signature by another key, is refused."""
    logged = fulcio.attest(DATA, "agent", IDENTITY, "b1", rekor=rekor, entry=entry)
    other = fulcio.attest(DATA, "agent", IDENTITY, "b2", rekor=rekor, entry=entry)
    swapped = copy.deepcopy(logged)
    swapped["dsseEnvelope"] = other["dsseEnvelope"]
    for field in ("certificate", "timestampVerificationData"):
        if field in other["verificationMaterial"]:
            swapped["verificationMaterial"][field] = other["verificationMaterial"][field]
    assert _fails(trust, swapped).check == "transparency-log"
    forged = copy.deepcopy(swapped)
    forged["verificationMaterial"]["certificate"] = logged["verificationMaterial"]["certificate"]
    assert _fails(trust, forged).check in {"signature", "signed-time"}


# -- managed keys (cosign sign-blob --key) ---------------------------------------------------

@pytest.mark.parametrize("rekor", ["v1", "v2"])
def test_managed_key_message_and_dsse_bundles(
    trust: Any, fulcio: PrivateSigstore, rekor: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    got = _verify(trust, fulcio.sign_with_key(DATA, key, rekor=rekor), key=key.public_key())
    assert got.kind == "message-signature" and got.identity == ""
    assert got.key_id == hashlib.sha256(key.public_key().public_bytes(*_spki_format())).hexdigest()
    assert got.time_source == ("transparency-log" if rekor == "v1" else "timestamp-authority")
    dsse = fulcio.attest_with_key(DATA, "agent", key, rekor=rekor)
    assert _verify(trust, dsse, key=key.public_key(), predicate_types=None).kind == "dsse"


def _spki_format() -> tuple[Any, Any]:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def test_managed_key_refusals(trust: Any, fulcio: PrivateSigstore) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    bundle = fulcio.sign_with_key(DATA, key, rekor="v2")
    assert _fails(trust, bundle, key=other.public_key()).check == "artifact-digest"
    assert _fails(trust, bundle, hashlib.sha256(b"x").hexdigest(),
                  key=key.public_key()).check == "artifact-digest"
    # The same signature re-logged under another key's entry: the body names the other key.
    relogged = fulcio.sign_with_key(DATA, other, rekor="v2")
    mixed = copy.deepcopy(bundle)
    mixed["verificationMaterial"]["tlogEntries"] = relogged["verificationMaterial"]["tlogEntries"]
    assert _fails(trust, mixed, key=key.public_key()).check in {"transparency-log", "signed-time"}
    no_log = copy.deepcopy(bundle)
    no_log["verificationMaterial"]["tlogEntries"] = []
    assert _fails(trust, no_log, key=key.public_key()).check == "transparency-log"
    # A certificate bundle given a key, and a key bundle verified as a certificate bundle.
    cert_bundle = fulcio.sign(DATA, IDENTITY)
    assert _fails(trust, cert_bundle, key=key.public_key()).check == "key"
    assert "--key" in _fails(trust, bundle).detail


# -- trust roots -----------------------------------------------------------------------------

def test_client_trust_config_is_a_trust_root(fulcio: PrivateSigstore, tmp_path: Path) -> None:
    path = tmp_path / "trust_config.json"
    path.write_text(json.dumps(fulcio.client_trust_config()))
    trust = load_sigstore_trust(path)
    assert _verify(trust, fulcio.sign(DATA, IDENTITY, rekor="v2")).identity == IDENTITY


def test_another_root_refuses_and_bad_roots_name_the_check(
    fulcio: PrivateSigstore, tmp_path: Path
) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps(PrivateSigstore().trusted_root()))
    assert _fails(load_sigstore_trust(other), fulcio.sign(DATA, IDENTITY, rekor="v2")).check in {
        "certificate-chain", "signed-time"}
    for text in ("{not json", "[]", json.dumps({"mediaType":
                 "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"})):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(CheckFailed) as e:
            load_sigstore_trust(bad)
        assert e.value.check == "trusted-root"


def test_root_with_only_log_keys_serves_key_bundles_and_fails_loudly_for_certificates(
    fulcio: PrivateSigstore, tmp_path: Path
) -> None:
    logs_only = {**fulcio.trusted_root(), "certificateAuthorities": [], "ctlogs": []}
    path = tmp_path / "logs_only.json"
    path.write_text(json.dumps(logs_only))
    with pytest.raises(CheckFailed) as e:
        load_sigstore_trust(path)  # the attestor's use: certificate bundles
    assert e.value.check == "trusted-root"
    attestor = SigstoreAttestor(SigstoreConfig(enabled=True, trusted_root=path))
    assert attestor.state().startswith(f"failing: trusted_root: {path} cannot verify certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    trust = load_sigstore_trust(path, certificates=False)
    assert _verify(trust, fulcio.sign_with_key(DATA, key, rekor="v2"),
                   key=key.public_key()).log_entry == "hashedrekord/0.0.2"


def test_garbage_bundles_fail_as_bundle_never_raise_otherwise(trust: Any) -> None:
    for raw in (b"", b"\xff\xfe", b"[]", b"{}", b"[" * 100_000, b'{"mediaType": 1}',
                b"\x00" * (5 << 20)):
        assert _fails(trust, raw).check == "bundle"


# -- real bundles (../shared/sigstore-assets) ------------------------------------------------

def _shared_root(name: str) -> Any:
    return load_sigstore_trust(SHARED / "trusted_roots" / name)


@needs_shared
@pytest.mark.parametrize(("artifact", "suffix", "root", "identity", "entry", "source"), [
    ("staging-rekor-v2.txt", ".sigstore.json", "staging.trusted_root.json", "jku@goto.fi",
     "hashedrekord/0.0.2", "timestamp-authority"),
    ("bundle_v3.txt", ".sigstore", "staging.trusted_root.json", "william@yossarian.net",
     "hashedrekord/0.0.1", "transparency-log"),
    ("tsa/bundle.txt", ".sigstore", "sigstore-python-test-tsa.trust_config.json",
     "alexis.challande@trailofbits.com", "hashedrekord/0.0.1", "transparency-log"),
])
def test_real_message_signature_bundles(artifact: str, suffix: str, root: str, identity: str,
                                        entry: str, source: str) -> None:
    path = SHARED / "sigstore-python" / artifact
    got = _verify(_shared_root(root), Path(str(path) + suffix).read_bytes(),
                  hashlib.sha256(path.read_bytes()).hexdigest())
    assert (got.identity, got.log_entry, got.time_source) == (identity, entry, source)


@needs_shared
def test_real_rekor_v2_dsse_with_four_checkpoint_signatures_and_no_tsa_certificate() -> None:
    raw = (SHARED / "sigstore-python" / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes()
    doc = json.loads(raw)
    assert doc["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"][
        "envelope"].count("\u2014") == 4
    # its in-toto subject is the sigstore-conformance a.txt
    subject = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))["subject"][0]
    got = _verify(_shared_root("staging.trusted_root.json"), raw, subject["digest"]["sha256"])
    assert (got.kind, got.log_entry, got.time_source) == (
        "dsse", "hashedrekord/0.0.2", "timestamp-authority")


@needs_shared
@pytest.mark.parametrize(("artifact", "suffix", "root", "check"), [
    ("bundle_v3_no_signed_time.txt", ".sigstore.json", "prod.trusted_root.json", "bundle"),
    ("bundle_cve_2022_36056.txt", ".sigstore", "staging.trusted_root.json", "transparency-log"),
    ("bundle_no_checkpoint.txt", ".sigstore", "staging.trusted_root.json", "bundle"),
    ("staging-rekor-v2.txt", ".sigstore.json", "prod.trusted_root.json", "signed-time"),
])
def test_real_bundles_that_must_fail(artifact: str, suffix: str, root: str, check: str) -> None:
    path = SHARED / "sigstore-python" / artifact
    failed = _fails(_shared_root(root), Path(str(path) + suffix).read_bytes(),
                    hashlib.sha256(path.read_bytes()).hexdigest())
    assert failed.check == check
