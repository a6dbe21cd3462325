"""The node's TPM: one supervised context (worker with a watchdog), EK certificate checks, an AK
proven by credential activation, quotes verified in pure Python against a PCR policy, measured
launches, sealing the CA state, an owned swtpm for dev and tests, and evidence for remote
verifiers. `TpmService` is what the daemon uses; the rest are its parts.
"""

from ensign.daemon.tpm.errors import TpmCommandFailed, TpmSealError, TpmUnavailable
from ensign.daemon.tpm.service import TpmEvent, TpmService

__all__ = ["TpmCommandFailed", "TpmEvent", "TpmSealError", "TpmService", "TpmUnavailable"]
