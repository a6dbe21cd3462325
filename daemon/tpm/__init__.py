"""The node's TPM: one supervised context (worker with a watchdog), EK certificate checks, an AK
proven by credential activation, quotes verified in pure Python against a PCR policy, measured
launches, sealing the CA state, an owned swtpm for dev and tests, and evidence for remote
verifiers. `TpmService` is what the daemon uses; the rest are its parts.
"""

from typing import TYPE_CHECKING

from ensign.daemon.tpm.errors import TpmCommandFailed, TpmSealError, TpmUnavailable

if TYPE_CHECKING:
    from ensign.daemon.tpm.service import TpmEvent, TpmService
else:  # tpm2-pytss (the TSS libraries) on first use (ensign.daemon.lazy): `ensign tpm verify`
    # checks evidence in pure Python, and a node without a TPM never needs them
    from ensign.daemon.lazy import lazy

    __getattr__ = lazy(__name__, {".service": ("TpmEvent", "TpmService")})

__all__ = ["TpmCommandFailed", "TpmEvent", "TpmSealError", "TpmService", "TpmUnavailable"]
