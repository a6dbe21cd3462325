"""`ensign`: the one console script. Each subcommand lives in a small module of this package,
over the shared helpers and conventions of `common` (output, times, sockets, admin calls).

Errors are one line on stderr and a non-zero exit code (`errors.EXIT_CODES`), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import warnings
from collections.abc import Sequence
from importlib import metadata

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ensign.daemon.errors import EnsignError, WrongSocket, exit_code_for

from .common import CliParser, Unreachable, last_socket, remote_error


def version() -> str:
    try:
        return metadata.version("ensign")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """`--version`, looked up only when asked for (reading package metadata costs ~50 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"ensign {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    # Imported here, after main() has set the warning filters: the commands pull in most of
    # the daemon's libraries.
    from . import (
        action_cmds,
        admin_cmds,
        daemon_cmds,
        fleet_cmds,
        helper_cmd,
        tpm_cmds,
        verify_cmd,
        workload_cmds,
    )

    parser = CliParser(prog="ensign", description="Identity for AI agents on this node.")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=CliParser)
    daemon_cmds.register(sub)
    workload_cmds.register(sub)
    helper_cmd.register(sub)
    admin_cmds.register(sub)
    action_cmds.register(sub)  # after admin_cmds: it adds `audit trail`
    verify_cmd.register(sub)
    tpm_cmds.register(sub)
    fleet_cmds.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Libraries' deprecation notices are for their developers, not for users of the command
    # (some, like cryptography's, are UserWarnings: matched by their text too).
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*deprecat")
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except KeyboardInterrupt:
        return 130
    except EnsignError as e:
        print(f"ensign: {e.diagnostics()}", file=sys.stderr)
        return e.exit_code
    except GRPCError as e:
        print(f"ensign: {_describe(e)}", file=sys.stderr)
        return exit_code_for(e.status, remote_error())
    except Unreachable as e:
        print(f"ensign: {e}", file=sys.stderr)
        return 69
    except BrokenPipeError:
        return 0  # the reader (head, less) went away: not an error
    except (StreamTerminatedError, ConnectionError) as e:
        print(f"ensign: connection to the daemon failed: {e}", file=sys.stderr)
        return 69
    except OSError as e:
        print(f"ensign: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}",
              file=sys.stderr)
        return 74


def _describe(e: GRPCError) -> str:
    used = last_socket()
    wrong = remote_error() == WrongSocket.__name__ or e.status == Status.UNIMPLEMENTED
    if wrong and used is not None:
        return (f"{used.path} does not serve the {used.name} ({e.message or 'unimplemented'}): "
                f"set {used.flag}")
    return f"{e.status.name}: {e.message or 'no message'}"


if __name__ == "__main__":
    sys.exit(main())
