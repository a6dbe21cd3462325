"""Helpers shared by the CLI modules: argument parsing, socket lookup, output."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from grpclib.client import Channel
from grpclib.events import RecvTrailingMetadata, listen

from ensign.daemon.errors import ERROR_KEY, ConfigError, UsageError
from ensign.daemon.units import parse_duration

DEFAULT_SOCKET = "/run/ensign/agent.sock"
DEFAULT_ADMIN_SOCKET = "/run/ensign/admin.sock"
TIMEOUT = 10.0

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


class Unreachable(Exception):
    """The daemon's socket cannot be reached."""


class CliParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 64."""

    def error(self, message: str) -> NoReturn:
        one_line = message.replace("\r", "\\r").replace("\n", "\\n")
        print(f"{self.prog}: error: {one_line}", file=sys.stderr)
        sys.exit(64)


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


@contextlib.asynccontextmanager
async def channel(path: str) -> AsyncIterator[Channel]:
    if not os.path.exists(path):  # noqa: ASYNC240 (one stat, before any I/O)
        raise Unreachable(f"no daemon socket at {path} (is the daemon running? set --socket)")
    ch = Channel(path=path)
    listen(ch, RecvTrailingMetadata, _note_error)
    try:
        yield ch
    except OSError as e:
        raise Unreachable(f"cannot reach the daemon at {path}: {e.strerror or e}") from None
    finally:
        ch.close()


async def _note_error(event: RecvTrailingMetadata) -> None:
    name = event.metadata.get(ERROR_KEY) if event.metadata else None
    _remote_error[0] = str(name) if name else ""


def count(text: str) -> int:
    """A non-negative whole number that fits the int64 fields it is sent in."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0 to {2**63 - 1})")
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


def add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="output format")


def print_json(value: Any) -> None:
    # One write: json.dump() would write every token separately (900k writes for 10k agents).
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def iso(ts: int | float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else "-"

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


_INT64 = {3, 4, 16, 18, 6}  # FieldDescriptor types int64/uint64/sint64/sfixed64/fixed64


def proto_dict(msg: Any) -> dict[str, Any]:
    """Like protobuf's MessageToDict (field names kept, defaults printed, 64-bit integers as
    strings), for our flat admin messages, about ten times faster: `agent list` over 10,000
    agents spends its time here."""
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            out[f.name] = dict(value)
        elif f.is_repeated:
            out[f.name] = ([proto_dict(v) for v in value] if f.message_type is not None
                           else [str(v) if f.type in _INT64 else v for v in value])
        elif f.message_type is not None:
            if msg.HasField(f.name):
                out[f.name] = proto_dict(value)
        else:
            out[f.name] = str(value) if f.type in _INT64 else value
    return out
