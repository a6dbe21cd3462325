"""One error hierarchy, and one table of what each error means on the wire and to a shell.

Every class carries the gRPC status a workload sees, the exit code the CLI returns, and the
message that is safe to send to a workload. Translation happens in exactly two places: the
server (`ensign.daemon.server.translate`, once per service) and the CLI (`ensign.daemon.cli`).
A refused call names its error class in the trailing metadata key `ensign-error`, so the CLI
exits with the same code for an error raised in the daemon as for one raised locally.

| class               | gRPC status         | exit | meaning
|---------------------|---------------------|------|------------------------------------------------
| UsageError          | (CLI only)          | 64   | a command line that cannot be carried out
| InvalidRequest      | INVALID_ARGUMENT    | 64   | a request missing or misusing a field
| WrongSocket         | UNIMPLEMENTED       | 64   | a call to a socket that does not serve its API
| InvalidData         | INVALID_ARGUMENT    | 65   | bad content: a file, a certificate, a past time
| TokenInvalid        | INVALID_ARGUMENT    | 65   | bad signature, expired, wrong audience
| AudienceMismatch    | INVALID_ARGUMENT    | 65   | ... a genuine token for another audience
| HolderInactive      | INVALID_ARGUMENT    | 65   | ... a token whose agent is no longer live
| Conflict            | ALREADY_EXISTS      | 65   | a name is taken
| FailedPrecondition  | FAILED_PRECONDITION | 65   | the current state does not allow it
| InvalidTransition   | FAILED_PRECONDITION | 65   | ... a lifecycle change in particular
| NotFound            | NOT_FOUND           | 66   | no such agent, role, grant or file
| AttestationError    | UNAVAILABLE         | 69   | attestation failed or timed out
| TpmUnavailable      | UNAVAILABLE         | 69   | ... the TPM cannot be reached (tpm/errors.py)
| NoTpm               | UNAVAILABLE         | 69   | this node has no TPM (api/attestation.py)
| StoreError          | UNAVAILABLE         | 74   | the registry cannot be read or written
| DatabaseUnavailable | UNAVAILABLE         | 69   | fleet database down: registry writes refused
| SigningError        | INTERNAL            | 70   | a CA or signing key is unusable
| TpmSealError        | INTERNAL            | 78   | ... a TPM-sealed CA key: the operator must act
| AuditUnavailable    | UNAVAILABLE         | 74   | the audit log cannot be written: not issuing
| RateLimited         | UNAVAILABLE         | 75   | over a per-uid limit; retry with backoff
| RequestTooLarge     | RESOURCE_EXHAUSTED  | 75   | a request message over the bound or budget
| PermissionDenied    | PERMISSION_DENIED   | 77   | the caller may not do this
| NoIdentity          | PERMISSION_DENIED   | 77   | no registry entry matches the caller
| CallerGone          | UNAUTHENTICATED     | 77   | the caller exited, exec'd or its pid was reused
| ConfigError         | (startup only)      | 78   | a bad config key or value; an upstream CA,
|                     |                     |      | [http] address or certificate that cannot
|                     |                     |      | be used
| EnsignError (other) | INTERNAL            | 70   | a bug: logged with its traceback

`EXIT_CODES` below says what each exit code means to a user; the README's table is that table
(a test compares them).
"""

from __future__ import annotations

from typing import ClassVar

from grpclib.const import Status

#: Trailing metadata key naming the error class of a refused call.
ERROR_KEY = "ensign-error"

#: Every exit code of the `ensign` command and what it means (sysexits.h where one fits).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "`healthcheck` only: the daemon answers but is not serving (the reason is printed)",
    64: "usage: a bad flag or argument, a request missing or misusing a field, a wrong socket",
    65: "data: invalid content (a file, a certificate, a time in the past, a token that is "
        "bad, meant for another audience or held by an agent no longer active), a name taken, "
        "a state that does not allow it, an audit trail or artifact that does not verify",
    66: "not found: no such agent, role or grant, or an input file that cannot be read",
    69: "unavailable: the daemon cannot be reached, attestation failed, the TPM is unavailable "
        "or the node has none",
    70: "internal: a bug or a CA key that fails to sign (details in the daemon's log)",
    74: "I/O: a file cannot be written, or the daemon cannot write its registry or audit log",
    75: "temporary: over a per-uid limit or the bound on request size, or no answer in time; "
        "retry with backoff",
    77: "permission: the caller may not do this, has no identity, or is not the process that "
        "connected",
    78: "config: a bad config key or file (an [http] address or certificate, an upstream CA, a "
        "CA key the TPM cannot unseal), or the data directory is in use by another daemon",
    130: "interrupted (Ctrl-C)",
}


class EnsignError(Exception):
    grpc_status: ClassVar[Status] = Status.INTERNAL
    exit_code: ClassVar[int] = 70  # EX_SOFTWARE
    public_message: ClassVar[str] = "internal error"
    #: May the caller read str(e)? True for errors about its own request; never for details
    #: that would map the node for an attacker (paths, selectors).
    detailed: ClassVar[bool] = False
    _by_name: ClassVar[dict[str, type[EnsignError]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        EnsignError._by_name.setdefault(cls.__name__, cls)

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
    detailed = True


class InvalidData(InvalidRequest):
    """Input whose form is right but whose content is not: a registry file, a certificate, a
    time already past, a document that does not verify."""

    exit_code = 65  # EX_DATAERR
    public_message = "invalid data"


class WrongSocket(EnsignError):
    """A call to a socket that serves another API (an admin command at the Workload API)."""

    grpc_status = Status.UNIMPLEMENTED
    exit_code = 64
    public_message = "not served on this socket"
    detailed = True


class NotFound(EnsignError):
    grpc_status = Status.NOT_FOUND
    exit_code = 66  # EX_NOINPUT
    public_message = "not found"
    detailed = True


class Conflict(EnsignError):
    grpc_status = Status.ALREADY_EXISTS
    exit_code = 65  # EX_DATAERR
    public_message = "already exists"
    detailed = True


class RequestTooLarge(EnsignError):
    """A request message over the socket's bound, or one that does not fit the budget for large
    messages being received at once (retry later)."""

    grpc_status = Status.RESOURCE_EXHAUSTED
    exit_code = 75  # EX_TEMPFAIL
    public_message = "request message too large"
    detailed = True


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
    detailed = True


class TokenInvalid(EnsignError):
    grpc_status = Status.INVALID_ARGUMENT
    exit_code = 65
    public_message = "token is not valid"
    detailed = True


class StoreError(EnsignError):
    grpc_status = Status.UNAVAILABLE
    exit_code = 74  # EX_IOERR
    public_message = "registry unavailable"


class DatabaseUnavailable(StoreError):
    """The fleet's database cannot be reached: the node keeps issuing from its copy of the
    registry, and refuses registry writes until the database is back. The message names the
    database (host, port, name; never credentials)."""

    exit_code = 69  # EX_UNAVAILABLE
    public_message = "fleet database unavailable: registry writes refused"
    detailed = True


class SigningError(EnsignError):
    exit_code = 70
    public_message = "signing failed"


class FailedPrecondition(EnsignError):
    """The record's or the node's current state does not allow it (a role still held, a grant
    to a decommissioned agent, delegation turned off)."""

    grpc_status = Status.FAILED_PRECONDITION
    exit_code = 65
    public_message = "not allowed in the current state"
    detailed = True


class InvalidTransition(FailedPrecondition):
    """A lifecycle change that the entry's current state does not allow."""

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
    detailed = True


def exit_code_for(status: Status, error_class: str = "") -> int:
    """The CLI's exit code for a refused call: its error class's when the daemon named one
    (trailing metadata `ensign-error`), else the code of the first class above with that
    status. One table, so a remote error exits as the same error raised locally would."""
    cls = EnsignError._by_name.get(error_class)
    if cls is not None:
        return cls.exit_code
    return _EXIT_FOR_STATUS.get(status, 70)


def _first_by_status() -> dict[Status, int]:
    table: dict[Status, int] = {Status.DEADLINE_EXCEEDED: 75, Status.UNIMPLEMENTED: 64,
                                Status.RESOURCE_EXHAUSTED: 75}
    for cls in (InvalidRequest, NotFound, Conflict, InvalidTransition, AttestationError,
                CallerGone, PermissionDenied, SigningError):
        table.setdefault(cls.grpc_status, cls.exit_code)
    return table


_EXIT_FOR_STATUS = _first_by_status()
