"""`ensign`: the one console script. Each subcommand lives in a small module of this package.

Errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from grpclib.exceptions import GRPCError, StreamTerminatedError

from ensign.daemon.errors import EnsignError, exit_code_for

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
from .common import CliParser, Unreachable, remote_error


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="ensign", description="Identity for AI agents on this node.")
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
        print(f"ensign: {e.status.name}: {e.message or 'no message'}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
