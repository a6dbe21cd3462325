"""One error hierarchy, translated in exactly two places: the gRPC servicers and the CLI.

Each class carries the gRPC status a workload sees, the exit code the CLI returns, and the
message that is safe to send to a workload. Details for operators go to the log.
"""

from __future__ import annotations

from typing import ClassVar

from grpclib.const import Status


class EnsignError(Exception):
    grpc_status: ClassVar[Status] = Status.INTERNAL
    exit_code: ClassVar[int] = 70  # EX_SOFTWARE
    public_message: ClassVar[str] = "internal error"

    def diagnostics(self) -> str:
        """Text for operators: what went wrong and, where known, what to do."""
        return str(self) or self.public_message


class ConfigError(EnsignError):
    exit_code = 78  # EX_CONFIG
    public_message = "invalid configuration"


class UsageError(EnsignError):
    """A CLI invocation that cannot be carried out as given."""

    exit_code = 64  # EX_USAGE
    public_message = "invalid usage"


class InvalidRequest(EnsignError):
    grpc_status = Status.INVALID_ARGUMENT
    exit_code = 64
    public_message = "invalid request"


class NotFound(EnsignError):
    grpc_status = Status.NOT_FOUND
    exit_code = 66  # EX_NOINPUT
    public_message = "not found"


class Conflict(EnsignError):
    grpc_status = Status.ALREADY_EXISTS
    exit_code = 65  # EX_DATAERR
    public_message = "already exists"


class AttestationError(EnsignError):
    grpc_status = Status.UNAVAILABLE
    exit_code = 69  # EX_UNAVAILABLE
    public_message = "workload attestation failed"


class CallerGone(AttestationError):
    """The calling process exited or its pid now names another process."""

    grpc_status = Status.UNAUTHENTICATED
    exit_code = 77  # EX_NOPERM
    public_message = "could not verify existence of the original caller"


class NoIdentity(EnsignError):
    grpc_status = Status.PERMISSION_DENIED
    exit_code = 77
    public_message = "no identity issued"


class PermissionDenied(EnsignError):
    grpc_status = Status.PERMISSION_DENIED
    exit_code = 77
    public_message = "permission denied"


class TokenInvalid(EnsignError):
    grpc_status = Status.INVALID_ARGUMENT
    exit_code = 65
    public_message = "token is not valid"


class StoreError(EnsignError):
    grpc_status = Status.UNAVAILABLE
    exit_code = 74  # EX_IOERR
    public_message = "registry unavailable"


class SigningError(EnsignError):
    exit_code = 70
    public_message = "signing failed"


class InvalidTransition(EnsignError):
    """A lifecycle change that the entry's current state does not allow."""

    grpc_status = Status.FAILED_PRECONDITION
    exit_code = 65
    public_message = "invalid state transition"


class AuditRecordRejected(EnsignError):
    """This request's audit record cannot be written (it holds text that cannot be encoded):
    the request is refused; other requests and the log are unaffected."""

    grpc_status = Status.INTERNAL
    exit_code = 70
    public_message = "audit record could not be written: not issuing"


class AuditUnavailable(EnsignError):
    """The audit log cannot be written: nothing is issued until it can (fail closed)."""

    grpc_status = Status.UNAVAILABLE
    exit_code = 74  # EX_IOERR
    public_message = "audit log unavailable: not issuing"
