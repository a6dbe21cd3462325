"""Workload attestors: one module each behind the interface in `base`.

An attestor turns a verified caller into selector values; it never decides identity (the
registry match does). Adding one means one module here, an entry in BUILTIN, and its config
section in ensign.daemon.config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Attestor, AttestorError
from .sigstore import SigstoreAttestor
from .systemd import SystemdAttestor
from .tpm import TpmAttestor
from .unix import UnixAttestor

#: name -> factory taking the attestor's config section (config.attestors.<name>)
BUILTIN: dict[str, Callable[[Any], Attestor]] = {
    "unix": UnixAttestor, "systemd": SystemdAttestor, "sigstore": SigstoreAttestor,
    "tpm": TpmAttestor,  # needs service=TpmService(...) to report anything
}

__all__ = [
    "BUILTIN", "Attestor", "AttestorError", "SigstoreAttestor", "SystemdAttestor", "TpmAttestor",
    "UnixAttestor",
]
