"""What every `ensign` command shares, and the conventions a new command keeps.

Output
    `-o/--output` is the output format, always (`add_output`: text or json; a command with
    other formats lists them, e.g. `audit export -o jsonl|ocsf`). A file to write is
    `--out FILE`, never `-o`; without `--out` the command prints to stdout.
    Text is for people: `print_table` (a header, columns as wide as their values),
    `print_fields` (key/value lines), times as RFC 3339 UTC (`fmt_time`), durations as
    `30d`/`1h`/`90s` (`fmt_duration`), `-` for unset, handles and digests in hex.
    JSON is for scripts (`print_json`): times are RFC 3339 strings or null when unset, numbers
    are numbers, durations are whole seconds in `*_seconds` fields. `message_json` turns an
    admin message into that shape (int64 `*_at` fields are times).

Errors and exit codes
    Raise an EnsignError subclass; `main()` prints it as one line and exits with its code
    (the one table: `ensign.daemon.errors.EXIT_CODES`). An input file that cannot be read:
    `read_input` (NotFound, 66; `limit` bounds its size). Content that is wrong: InvalidData
    (65). A flag that cannot work: UsageError (64), or an argparse type function raising
    ArgumentTypeError. A name from the command line in a message goes through `shown`.
    A command that keeps running (`helper`) reports progress as `ensign COMMAND: ...` lines on
    stderr (`progress`), with times and durations as above.

Sockets
    Workload API commands: `add_workload_flags` (`--socket`, `--timeout`) and
    `workload_channel(args)`; admin commands: `add_admin_flags` (`--admin-socket`, `--config`)
    and `admin_call(args, lambda stub: stub.Method(request, timeout=TIMEOUT))` or
    `admin_channel(args)` for streams. The lookup order is the README's; a missing socket, or a
    socket that serves the other API, is reported in one line naming the flag to set.

Input
    `timestamp` (RFC 3339, or a duration from now), `duration_seconds` (`30s 5m 1h 7d`),
    `count` (a non-negative int64), `positive_seconds` (a timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NoReturn, TypeVar

from grpclib.client import Channel
from grpclib.events import RecvTrailingMetadata, listen

from ensign.daemon.errors import ERROR_KEY, ConfigError, InvalidData, NotFound, UsageError
from ensign.daemon.units import parse_duration
from ensign.proto.admin_grpc import AdminStub

# The output conventions live in output.py; commands import them from here with the rest.
from .output import fmt_duration as fmt_duration
from .output import fmt_time as fmt_time
from .output import json_time as json_time
from .output import message_json as message_json
from .output import plain_numbers as plain_numbers
from .output import print_fields as print_fields
from .output import print_json as print_json
from .output import print_table as print_table

DEFAULT_SOCKET = "/run/ensign/agent.sock"
DEFAULT_ADMIN_SOCKET = "/run/ensign/admin.sock"
TIMEOUT = 10.0
T = TypeVar("T")
Api = Literal["admin", "workload"]

#: The error class the daemon named for the last refused call (trailing `ensign-error`).
#: A plain global, not a ContextVar: it is set in asyncio.run's tasks and read after it.
_remote_error = [""]

#: Where the error classes the daemon may name live when not in ensign.daemon.errors. A command
#: imports only what it uses, so the class may not be loaded (EnsignError._by_name) when a call
#: is refused with it. tests/unit/test_imports.py checks that every class is here or there.
_ERROR_HOMES = {
    "AudienceDenied": "ensign.daemon.registry.policy",
    "AudienceMismatch": "ensign.daemon.issuing.jwt_svid",
    "ChallengeRefused": "ensign.daemon.tpm._service_ops",
    "DelegationDenied": "ensign.daemon.delegation.rules",
    "HolderInactive": "ensign.daemon.issuing.jwt_svid",
    "NoTpm": "ensign.daemon.api.attestation",
    "RateLimited": "ensign.daemon.server.limits",
    "SubjectTokenInvalid": "ensign.daemon.delegation.idp",
}


def remote_error() -> str:
    """The class the daemon named for the last refused call, loaded for exit_code_for."""
    name = _remote_error[0]
    if name in _ERROR_HOMES:
        with contextlib.suppress(ImportError, OSError):  # no TSS libraries: the status's code
            importlib.import_module(_ERROR_HOMES[name])
    return name


@dataclass(frozen=True, slots=True)
class SocketUse:
    """The socket the last call went to, and the flag that names it (for error messages)."""

    path: str
    api: Api

    @property
    def flag(self) -> str:
        return ("--admin-socket or $ENSIGN_ADMIN_SOCKET" if self.api == "admin"
                else "--socket or $SPIFFE_ENDPOINT_SOCKET")

    @property
    def name(self) -> str:
        return "admin API" if self.api == "admin" else "Workload API"


_last_socket: list[SocketUse | None] = [None]


def last_socket() -> SocketUse | None:
    return _last_socket[0]


class Unreachable(Exception):
    """The daemon's socket cannot be reached."""


class CliParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 64."""

    def error(self, message: str) -> NoReturn:
        one_line = message.replace("\r", "\\r").replace("\n", "\\n")
        print(f"{self.prog}: error: {one_line}", file=sys.stderr)
        sys.exit(64)


# -- sockets ---------------------------------------------------------------------------------


def socket_path(arg: str | None, env: str, default: str) -> str:
    value = arg or os.environ.get(env) or default
    if value.startswith("unix://"):
        rest = value[len("unix://"):]
        if not rest.startswith("/"):
            raise UsageError(f"{value!r}: a unix socket URI has no authority: unix:///path")
        value = rest
    elif value.startswith("unix:"):
        value = value[len("unix:"):]
    elif "://" in value:
        raise UsageError(f"{value!r}: only unix:// sockets are supported")
    if not value.startswith("/"):
        raise UsageError(f"{value!r}: socket path must be absolute")
    return value


def add_workload_flags(p: argparse.ArgumentParser, *, timeout: bool = True) -> None:
    p.add_argument("--socket", help="Workload API socket (default $SPIFFE_ENDPOINT_SOCKET, "
                                    f"then {DEFAULT_SOCKET})")
    if timeout:
        p.add_argument("--timeout", type=positive_seconds, default=TIMEOUT, metavar="SECONDS",
                       help=f"how long to wait for the daemon (default {TIMEOUT:g})")


def add_admin_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin-socket", help="admin socket (default $ENSIGN_ADMIN_SOCKET, "
                   "then the config's admin_socket_path)")
    p.add_argument("--config", type=Path, help="config file to find the admin socket in")


def workload_socket(args: argparse.Namespace) -> str:
    return socket_path(getattr(args, "socket", None), "SPIFFE_ENDPOINT_SOCKET", DEFAULT_SOCKET)


def admin_socket(args: argparse.Namespace) -> str:
    default = DEFAULT_ADMIN_SOCKET
    if not args.admin_socket and not os.environ.get("ENSIGN_ADMIN_SOCKET"):
        path = args.config or (Path(os.environ["ENSIGN_CONFIG"])
                               if os.environ.get("ENSIGN_CONFIG") else None)
        from ensign.daemon import config as config_mod  # pydantic models: only if needed

        if path is not None or config_mod.DEFAULT_CONFIG_PATH.exists():
            try:
                default = str(config_mod.load(path).admin_socket_path)
            except ConfigError:
                if path is not None:
                    raise
    return socket_path(args.admin_socket, "ENSIGN_ADMIN_SOCKET", default)


@contextlib.asynccontextmanager
async def channel(path: str, api: Api = "workload") -> AsyncIterator[Channel]:
    use = SocketUse(path, api)
    _last_socket[0] = use
    if not os.path.exists(path):  # noqa: ASYNC240 (one stat, before any I/O)
        raise Unreachable(f"no daemon socket at {path} (is the daemon running? "
                          f"set {use.flag})")
    ch = Channel(path=path)
    listen(ch, RecvTrailingMetadata, _note_error)
    try:
        yield ch
    except OSError as e:
        raise Unreachable(f"cannot reach the daemon at {path}: {e.strerror or e}") from None
    finally:
        ch.close()


def workload_channel(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[Channel]:
    return channel(workload_socket(args), "workload")


def admin_channel(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[Channel]:
    return channel(admin_socket(args), "admin")


async def admin_call(args: argparse.Namespace, call: Callable[[AdminStub], Awaitable[T]]) -> T:
    """One unary call on the admin socket: `await admin_call(args, lambda s: s.GetRole(req,
    timeout=TIMEOUT))`."""
    async with admin_channel(args) as ch:
        return await call(AdminStub(ch))


async def _note_error(event: RecvTrailingMetadata) -> None:
    name = event.metadata.get(ERROR_KEY) if event.metadata else None
    _remote_error[0] = str(name) if name else ""


# -- input -----------------------------------------------------------------------------------


def shown(value: object) -> str:
    """A name from the command line on one printable line (for error messages)."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def progress(command: str, message: str) -> None:
    """One progress line of a long-running command, on stderr (stdout stays for output)."""
    sys.stderr.write(f"ensign {command}: {message}\n")
    sys.stderr.flush()


def read_input(path: Path, what: str = "file", limit: int | None = None) -> bytes:
    """An input file's bytes: NotFound (exit 66) naming it when it cannot be read, UsageError
    (64) for a name no file can have (NUL), InvalidData (65) when larger than `limit`."""
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError as e:
        raise NotFound(f"{shown(path)}: cannot read {what}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"{shown(path)}: {e}") from None
    if limit is not None and len(data) > limit:
        raise InvalidData(f"{shown(path)}: {what} larger than {limit} bytes")
    return data


def count(text: str) -> int:
    """A non-negative whole number that fits the int64 fields it is sent in."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0 to {2**63 - 1})")
    return value


def positive_seconds(text: str) -> float:
    """A timeout in seconds: more than 0, at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds above 0 "
                                         "(at most 86400)")
    return value


def duration_seconds(text: str) -> int:
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def timestamp(text: str) -> int:
    """Accept RFC 3339 / ISO 8601 times, or a duration from now (e.g. 30d)."""
    try:
        return int(datetime.now(UTC).timestamp()) + int(parse_duration(text).total_seconds())
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use 2026-12-31T00:00:00Z or a duration such as 30d"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp())


# -- output ----------------------------------------------------------------------------------


def add_output(parser: argparse.ArgumentParser,
               choices: Sequence[str] = ("text", "json")) -> None:
    parser.add_argument("-o", "--output", choices=list(choices), default=choices[0],
                        help=f"output format (default {choices[0]})")
