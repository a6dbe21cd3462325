"""`ensign verify-artifact`: the CI check that an agent build is signed by the expected identity.

Offline: the trusted root comes from `--trusted-root`, else /etc/ensign/sigstore/trusted_root.json,
else the Sigstore public-good production root shipped inside the sigstore package (never the TUF
cache, never the network). Exit 0 only when every check passes; otherwise one line naming the
check that failed.
"""

from __future__ import annotations

import argparse
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ensign.attestors._sigstore_verify import CheckFailed, identity_policy, load_verifier, verify
from ensign.daemon.errors import EnsignError, UsageError

from .common import add_output, print_json

SYSTEM_ROOT = Path("/etc/ensign/sigstore/trusted_root.json")


class ArtifactInvalid(EnsignError):
    exit_code = 65  # EX_DATAERR
    public_message = "artifact does not verify"


def production_root() -> Path:
    """The production trusted root embedded in the sigstore wheel, read as a plain file."""
    import sigstore

    return (Path(sigstore.__file__).parent / "_store"
            / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev" / "trusted_root.json")


def register(sub: Any) -> None:
    p = sub.add_parser("verify-artifact", help="CI: check a signed agent build (offline)")
    p.add_argument("file", type=Path)
    p.add_argument("--bundle", type=Path, help="default: FILE.sigstore.json or FILE.sigstore")
    ident = p.add_mutually_exclusive_group(required=True)
    ident.add_argument("--cert-identity", help="the signer's exact identity (certificate SAN)")
    ident.add_argument("--cert-identity-regexp", help="a regular expression the SAN must match")
    p.add_argument("--cert-oidc-issuer", required=True, help="the OIDC issuer of the signer")
    p.add_argument("--trusted-root", type=Path, help="trusted_root.json (default: see docs)")
    p.add_argument("--provenance", action="store_true",
                   help="require an in-toto SLSA provenance attestation for FILE")
    add_output(p)
    p.set_defaults(func=verify_artifact)


def _default_bundle(file: Path) -> Path:
    for suffix in (".sigstore.json", ".sigstore"):
        candidate = file.with_name(file.name + suffix)
        if candidate.exists():
            return candidate
    raise UsageError(f"no bundle given and none beside {file} (.sigstore.json or .sigstore)")


def verify_artifact(args: argparse.Namespace) -> int:
    root = args.trusted_root or (SYSTEM_ROOT if SYSTEM_ROOT.exists() else production_root())
    bundle_path = args.bundle or _default_bundle(args.file)
    try:
        digest = hashlib.sha256()
        with open(args.file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        bundle = bundle_path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {e.filename}: {e.strerror}") from None
    try:
        verifier = load_verifier(root)
        result = verify(verifier, bundle, digest.hexdigest(),
                        policy=identity_policy(args.cert_identity, args.cert_identity_regexp,
                                               args.cert_oidc_issuer),
                        require_provenance=args.provenance)
    except CheckFailed as e:
        raise ArtifactInvalid(f"{args.file}: verification failed at {e.check}: {e.detail}") \
            from None
    when = datetime.fromtimestamp(result.integrated_time, UTC).isoformat() \
        if result.integrated_time else ""
    doc = {"file": str(args.file), "sha256": digest.hexdigest(), "bundle": str(bundle_path),
           "kind": result.kind, "signer": result.identity, "issuer": result.issuer,
           "log_index": result.log_index, "integrated_time": when, **result.facts}
    if result.builder_id:
        doc["builder"] = result.builder_id
        doc["predicate_type"] = result.predicate_type
    if args.output == "json":
        print_json(doc)
    else:
        print(f"OK: {args.file} signed by {result.identity} ({result.issuer}), "
              f"log index {result.log_index}")
    return 0
