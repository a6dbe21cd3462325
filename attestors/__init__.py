"""Workload attestors: one module each behind the interface in `base`.

An attestor turns a verified caller into selector values; it never decides identity (the
registry match does). Adding one means one module here, an entry in BUILTIN, and its config
section in ensign.daemon.config.

The offline Sigstore verification behind the sigstore attestor is public too (`ensign
verify-artifact` uses it): `load_sigstore_trust`, `verify_sigstore_bundle`, `identity_policy`,
`load_public_key`, `CheckFailed`, `Verified`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import Attestor, AttestorError
from .sigstore_config import DEFAULT_PREDICATE_TYPES
from .systemd import SystemdAttestor
from .tpm import TpmAttestor
from .unix import UnixAttestor

if TYPE_CHECKING:
    from ._sigstore_verify import (
        MAX_BUNDLE_BYTES,
        CheckFailed,
        Verified,
        identity_policy,
        load_public_key,
    )
    from ._sigstore_verify import load_verifier as load_sigstore_trust
    from ._sigstore_verify import verify as verify_sigstore_bundle
    from .sigstore import SigstoreAttestor
else:  # Sigstore verification and its cryptography on first use (ensign.daemon.lazy)
    from ensign.daemon.lazy import lazy

    __getattr__ = lazy(__name__, {
        "._sigstore_verify": ("MAX_BUNDLE_BYTES", "CheckFailed", "Verified", "identity_policy",
                              "load_public_key", "load_sigstore_trust=load_verifier",
                              "verify_sigstore_bundle=verify"),
        ".sigstore": ("SigstoreAttestor",),
    })


def _sigstore(config: Any) -> Attestor:
    from .sigstore import SigstoreAttestor

    return SigstoreAttestor(config)


#: name -> factory taking the attestor's config section (config.attestors.<name>)
BUILTIN: dict[str, Callable[[Any], Attestor]] = {
    "unix": UnixAttestor, "systemd": SystemdAttestor, "sigstore": _sigstore,
    "tpm": TpmAttestor,  # needs service=TpmService(...) to report anything
}

__all__ = [
    "BUILTIN", "DEFAULT_PREDICATE_TYPES", "MAX_BUNDLE_BYTES", "Attestor", "AttestorError",
    "CheckFailed", "SigstoreAttestor", "SystemdAttestor", "TpmAttestor", "UnixAttestor",
    "Verified", "identity_policy", "load_public_key", "load_sigstore_trust",
    "verify_sigstore_bundle",
]
