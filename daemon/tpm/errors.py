"""Errors of the TPM subsystem, placed in the daemon's one hierarchy (ensign.daemon.errors)."""

from __future__ import annotations

from ensign.daemon.errors import AttestationError, SigningError


class TpmUnavailable(AttestationError):
    """The TPM cannot be reached or did not answer in time (UNAVAILABLE, exit 69).

    Requests that need TPM selectors get UNAVAILABLE while this lasts; the service keeps
    reconnecting in the background.
    """

    public_message = "TPM unavailable"


class TpmCommandFailed(AttestationError):
    """The TPM answered but refused a command (a TPM response code, not a transport failure)."""

    public_message = "TPM command failed"


class TpmSealError(SigningError):
    """A sealed secret cannot be unsealed (or sealed): the CA must not issue. The daemon refuses
    to start (exit 78, EX_CONFIG, so systemd does not restart it in a loop): the operator must
    restore the measured state or re-seal."""

    exit_code = 78

    public_message = "TPM-sealed key unavailable: not issuing"
