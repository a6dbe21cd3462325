"""Workload attestors: one module each behind the interface in `base`.

An attestor turns a verified caller into selector values; it never decides identity (the
registry match does). Adding one means one module here, an entry in BUILTIN, and its config
section in ensign.daemon.config.
"""

from __future__ import annotations

from .base import Attestor, AttestorError
from .systemd import SystemdAttestor
from .unix import UnixAttestor

BUILTIN: dict[str, type[Attestor]] = {"unix": UnixAttestor, "systemd": SystemdAttestor}

__all__ = ["BUILTIN", "Attestor", "AttestorError", "SystemdAttestor", "UnixAttestor"]
