"""Who is calling: the attestation pipeline, process liveness, and selector resolution.

`AttestationPipeline` turns a pinned caller into selectors (attestors run concurrently, cached
per process image); `Resolver` turns selectors into the registry entries the caller holds, the
node's TPM selectors included; `check_alive` says whether the pinned process is still there.
"""

from ensign.daemon.identity.liveness import check_alive, same_image
from ensign.daemon.identity.pipeline import AttestationPipeline
from ensign.daemon.identity.resolve import NodeEvidence, Resolver

__all__ = ["AttestationPipeline", "NodeEvidence", "Resolver", "check_alive", "same_image"]
