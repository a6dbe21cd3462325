"""`ensign verify-artifact`: the CI check that an agent build is signed by the expected identity.

Offline: the trust root comes from `--trusted-root` (a TrustedRoot or a ClientTrustConfig),
else /etc/ensign/sigstore/trusted_root.json, else the Sigstore public-good production root
shipped inside the sigstore package (never the TUF cache, never the network). The flags follow
cosign's `verify-blob` (`--certificate-identity[-regexp]`, `--certificate-oidc-issuer[-regexp]`,
`--key`, an artifact given as `sha256:<hex>`). Exit 0 only when every check passes; otherwise
one line naming the check that failed (65), or the usage error (64), or the missing file (66).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from ensign.daemon.errors import EnsignError, NotFound, UsageError

from .common import add_output, fmt_time, json_time, print_json, read_input, shown

SYSTEM_ROOT = Path("/etc/ensign/sigstore/trusted_root.json")
_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")
_MAX_KEY_BYTES = 1 << 16


class ArtifactInvalid(EnsignError):
    exit_code = 65  # EX_DATAERR
    public_message = "artifact does not verify"


def production_root() -> Path:
    """The production trusted root embedded in the sigstore wheel, read as a plain file."""
    import sigstore

    return (Path(sigstore.__file__).parent / "_store"
            / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev" / "trusted_root.json")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify-artifact", help="CI: check a signed agent build (offline)",
        description="Verify a Sigstore bundle for FILE offline, as cosign verify-blob does. "
                    "Exit 0: verified; 65: a check failed (named); 64: usage; 66: a file is "
                    "missing.")
    p.add_argument("file", metavar="FILE|sha256:HEX",
                   help="the artifact, or its digest as sha256:<64 hex> (then --bundle is "
                        "required)")
    p.add_argument("--bundle", type=Path, metavar="B",
                   help="default: FILE.sigstore.json or FILE.sigstore")
    p.add_argument("--cert-identity", "--certificate-identity", metavar="I",
                   help="the signer's exact identity (a certificate SAN)")
    p.add_argument("--cert-identity-regexp", "--certificate-identity-regexp", metavar="R",
                   help="a regular expression found in a SAN (a search, as cosign's: anchor "
                        "it with ^...$ to match the whole SAN)")
    p.add_argument("--cert-oidc-issuer", "--certificate-oidc-issuer", metavar="U",
                   help="the signer's exact OIDC issuer")
    p.add_argument("--cert-oidc-issuer-regexp", "--certificate-oidc-issuer-regexp", metavar="R",
                   help="a regular expression found in the OIDC issuer (a search)")
    p.add_argument("--key", type=Path, metavar="PUB",
                   help="a managed-key bundle's public key (PEM, as `cosign public-key` "
                        "prints it); no identity or issuer flags then")
    p.add_argument("--trusted-root", "--trust-config", type=Path, metavar="F",
                   help=f"a trusted_root.json or a ClientTrustConfig (default: {SYSTEM_ROOT} "
                        "if it exists, else the Sigstore public-good production root shipped "
                        "with sigstore-python; never fetched)")
    p.add_argument("--provenance", action="store_true",
                   help="require an in-toto SLSA provenance attestation for FILE")
    add_output(p)
    p.set_defaults(func=verify_artifact)


def _policy(args: argparse.Namespace) -> Any:
    from ensign.attestors import identity_policy  # Sigstore verification: this command's alone

    identities = [x for x in (args.cert_identity, args.cert_identity_regexp) if x is not None]
    issuers = [x for x in (args.cert_oidc_issuer, args.cert_oidc_issuer_regexp) if x is not None]
    if args.key is not None:
        if identities or issuers:
            raise UsageError("--key verifies a managed-key bundle: give no --cert-identity or "
                             "--cert-oidc-issuer flags with it")
        return None
    if len(identities) != 1:
        raise UsageError("give one of --cert-identity or --cert-identity-regexp (or --key)")
    if len(issuers) != 1:
        raise UsageError("give one of --cert-oidc-issuer or --cert-oidc-issuer-regexp")
    for flag, pattern in (("--cert-identity-regexp", args.cert_identity_regexp),
                          ("--cert-oidc-issuer-regexp", args.cert_oidc_issuer_regexp)):
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as e:
                raise UsageError(f"{flag}: invalid regular expression: {e}") from None
    return identity_policy(args.cert_identity, args.cert_identity_regexp,
                           args.cert_oidc_issuer, args.cert_oidc_issuer_regexp)


def _artifact(spec: str) -> tuple[str, Path | None]:
    """(sha256 hex, file or None). `sha256:<hex>` names a digest unless such a file exists
    (the Sigstore conformance CLI protocol's rule)."""
    digest = _DIGEST.fullmatch(spec)
    if digest and not os.path.lexists(spec):
        return digest.group(1).lower(), None
    path = Path(spec)
    h = hashlib.sha256()
    with _opened(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest(), path


class _opened:
    """open(path, "rb") with a missing or unreadable file as NotFound (66) and a name no
    file can have (NUL) as UsageError (64)."""

    def __init__(self, path: Path) -> None:
        try:
            self._f = open(path, "rb")  # noqa: SIM115 (closed in __exit__)
        except OSError as e:
            raise NotFound(f"cannot read {shown(path)}: {e.strerror or e}") from None
        except ValueError as e:
            raise UsageError(f"{shown(path)}: {e}") from None

    def __enter__(self) -> Any:
        return self._f

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _default_bundle(file: Path | None) -> Path:
    if file is None:
        raise UsageError("an artifact given as sha256:<hex> needs --bundle")
    for suffix in (".sigstore.json", ".sigstore"):
        candidate = file.with_name(file.name + suffix)
        if os.path.exists(candidate):
            return candidate
    raise NotFound(f"no bundle given and none beside {shown(file)} (.sigstore.json or "
                   ".sigstore)")


def verify_artifact(args: argparse.Namespace) -> int:
    from ensign.attestors import (
        DEFAULT_PREDICATE_TYPES,
        MAX_BUNDLE_BYTES,
        CheckFailed,
        load_public_key,
        load_sigstore_trust,
        verify_sigstore_bundle,
    )

    # sigstore-python logs warnings of its own (a root CA in a bundle, ...): the verdict is
    # the one line this command prints.
    logging.getLogger("sigstore").addHandler(logging.NullHandler())
    logging.getLogger("sigstore").propagate = False
    policy = _policy(args)
    root = args.trusted_root or (SYSTEM_ROOT if SYSTEM_ROOT.exists() else production_root())
    digest, file = _artifact(args.file)
    bundle_path = args.bundle or _default_bundle(file)
    bundle = read_input(bundle_path, "bundle", MAX_BUNDLE_BYTES)
    if not os.path.exists(root):
        raise NotFound(f"no trusted root at {shown(root)}")
    key_pem = read_input(args.key, "key", _MAX_KEY_BYTES) if args.key is not None else None
    try:
        key = load_public_key(key_pem) if key_pem is not None else None
        result = verify_sigstore_bundle(
            load_sigstore_trust(root, certificates=key is None), bundle, digest,
            policy=policy, key=key,
            predicate_types=DEFAULT_PREDICATE_TYPES if args.provenance else None,
            require_provenance=args.provenance)
    except CheckFailed as e:
        raise ArtifactInvalid(f"{shown(args.file)}: verification failed at {e.check}: "
                              f"{e.detail}") from None
    signed = result.signed_time.timestamp() if result.signed_time else None
    signer = result.identity if not result.key_id else f"key sha256:{result.key_id}"
    doc = {"file": args.file, "sha256": digest, "bundle": str(bundle_path),
           "kind": result.kind, "signer": signer, "issuer": result.issuer,
           "log_index": result.log_index, "log_entry": result.log_entry,
           "signed_time": json_time(signed), "time_source": result.time_source,
           **result.facts}
    if result.builder_id or result.predicate_type:
        doc["builder"] = result.builder_id
        doc["predicate_type"] = result.predicate_type
    if args.output == "json":
        print_json(doc)
    else:
        by = f"{signer} ({result.issuer})" if result.issuer else signer
        print(f"OK: {shown(args.file)} signed by {by}, log index {result.log_index}"
              + (f", signed {fmt_time(signed)} ({result.time_source})" if signed else ""))
    return 0
