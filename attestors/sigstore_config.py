"""The sigstore attestor's config section (`[attestors.sigstore]`).

Apart from the attestor so that the daemon's config, which every `ensign` command loads, does
not import the verification code and its cryptography.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ensign.daemon.config_types import Size, StrictModel

from ._launcher import UNIT_DIRS

#: The in-toto predicates taken as build provenance (SLSA v1 and v0.2).
DEFAULT_PREDICATE_TYPES = (
    "https://slsa.dev/provenance/v1",
    "https://slsa.dev/provenance/v0.2",
)


class SigstoreConfig(StrictModel):
    enabled: bool = False
    trusted_root: Path = Path("/etc/ensign/sigstore/trusted_root.json")
    bundle_dirs: list[Path] = Field(default_factory=lambda: [Path("/etc/ensign/sigstore/bundles")])
    interpreters: list[Path] = Field(default_factory=lambda: [
        Path("/usr/bin/python3"), Path("/usr/bin/node"), Path("/usr/bin/nodejs")])
    predicate_types: list[str] = Field(default_factory=lambda: list(DEFAULT_PREDICATE_TYPES))
    #: Where unit definitions are looked up for scripts (systemd's search path, in its order).
    unit_dirs: list[Path] = Field(default_factory=lambda: [Path(d) for d in UNIT_DIRS])
    #: Larger executables and scripts are not hashed (no sigstore selectors), like `unix`.
    max_hash_bytes: Size = Field(default=1 << 30, ge=0)
