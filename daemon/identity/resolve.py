"""Which registry entries an attested caller holds: the one place selectors become identities.

The node's TPM-proven selectors (`tpm:...`) are merged in here, at match time, so every service
decides identity the same way: an entry that requires `tpm:policy:pass` matches for SVIDs and
for token exchange alike, and only while the node's last quote passed the policy.
"""

from __future__ import annotations

from typing import Protocol

from ensign.attestors.tpm import PREFIX as TPM_PREFIX
from ensign.attestors.tpm import matches_with_tpm
from ensign.daemon.errors import NoIdentity
from ensign.daemon.models import AttestedCaller
from ensign.daemon.registry import Entry, Registry
from ensign.daemon.tpm.errors import TpmUnavailable


class NodeEvidence(Protocol):
    """What resolution needs from the node's TPM service."""

    @property
    def available(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...

    def node_selectors(self) -> frozenset[str]: ...


class Resolver:
    def __init__(self, registry: Registry, node: NodeEvidence | None = None) -> None:
        self._registry = registry
        self._node = node

    def selectors(self, attested: AttestedCaller) -> frozenset[str]:
        """The caller's selectors with the node's current TPM selectors (never the caller's own
        claim to them)."""
        if self._node is None:
            return attested.selectors
        own = frozenset(s for s in attested.selectors if not s.startswith(TPM_PREFIX))
        return own | self._node.node_selectors()

    def resolve(self, attested: AttestedCaller) -> list[Entry]:
        """Live entries the caller holds, in id order; NoIdentity (or TpmUnavailable) if none."""
        selectors = self.selectors(attested)
        entries = self._registry.match(selectors)
        if entries:
            return entries
        if (self._node is not None and not self._node.available
                and matches_with_tpm(self._registry.active_selector_sets(), selectors)):
            raise TpmUnavailable(f"TPM unavailable: {self._node.problem}")
        raise NoIdentity(f"no entry matches pid {attested.caller.pid} "
                         f"selectors {sorted(attested.selectors)}")
