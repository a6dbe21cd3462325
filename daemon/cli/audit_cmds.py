"""`ensign audit list|verify|export`: read, check and ship the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensign.daemon.errors import EnsignError
from ensign.daemon.units import parse_duration
from ensign.proto import admin_pb2 as pb
from ensign.proto.admin_grpc import AdminStub

from . import fleet_cmds
from .common import admin_socket, channel, count, print_json

if TYPE_CHECKING:  # the audit package and the config: imported by the commands using them
    from ensign.daemon.audit import AuditFilter

Common = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


class AuditInvalid(EnsignError):
    exit_code = 65  # EX_DATAERR
    public_message = "audit trail does not verify"


def _when(text: str) -> str:
    """RFC 3339, or a duration meaning that long ago (`1h`)."""
    try:
        return (datetime.now(UTC) - parse_duration(text)).isoformat(timespec="microseconds")
    except OverflowError:
        raise argparse.ArgumentTypeError(f"time {text!r} ago is out of range") from None
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use 2026-12-31T00:00:00Z or a duration ago such as 1h"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC).isoformat(
        timespec="microseconds")


def register(sub: Any, common: Common) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND",
                                parser_class=type(audit))

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--agent", default="", help="the agent's own trail (what it did)")
        p.add_argument("--subject", default="", help="admin actions on this agent or role")
        p.add_argument("--delegator", default="")
        p.add_argument("--type", default="", help="record type, or a prefix ending in '.'")
        p.add_argument("--result", default="", choices=["", "success", "denied", "failure"])
        p.add_argument("--since", type=_when, metavar="TIME")
        p.add_argument("--until", type=_when, metavar="TIME")
        p.add_argument("--limit", type=count, default=0)

    ls = common(asub.add_parser("list", help="records matching filters (admin socket)"))
    filters(ls)
    ls.add_argument("--fleet", action="store_true",
                    help="every node's shipped records, from the fleet database")
    fleet_cmds.add_database(ls)
    ls.set_defaults(func=audit_list)

    ex = common(asub.add_parser("export", help="records as JSON lines or OCSF (admin socket)"))
    filters(ex)
    ex.add_argument("--format", choices=["jsonl", "ocsf"], default="jsonl")
    ex.set_defaults(func=audit_export)

    arc = asub.add_parser("archive", help="move old segments and their checkpoints away")
    arc.add_argument("--to", type=Path, required=True, metavar="DIR")
    arc.add_argument("--keep", type=count, default=1, help="newest segments to keep (default 1)")
    arc.add_argument("--config", type=Path, help="config naming data_dir")
    arc.add_argument("--data-dir", type=Path, help="data directory (instead of --config)")
    arc.set_defaults(func=audit_archive)

    ver = asub.add_parser("verify", help="recompute the chain and checkpoints (offline)")
    ver.add_argument("--config", type=Path, help="config naming data_dir")
    ver.add_argument("--data-dir", type=Path, help="data directory (instead of --config)")
    ver.add_argument("--from-checkpoint", type=count, metavar="SEQ",
                     help="start at this checkpoint (earlier segments archived)")
    ver.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ver.add_argument("--fleet", action="store_true",
                     help="every node's chain as shipped to the fleet database, with its "
                          "checkpoints, and how far behind each node is")
    fleet_cmds.add_database(ver)
    ver.set_defaults(func=audit_verify)


async def _query(args: argparse.Namespace) -> list[dict[str, Any]]:
    q = pb.AuditQuery(agent=args.agent, subject=args.subject, delegator=args.delegator,
                      type=args.type, result=args.result, since=args.since or "",
                      until=args.until or "", limit=args.limit)
    out: list[dict[str, Any]] = []
    async with (
        channel(admin_socket(args)) as ch,
        AdminStub(ch).QueryAudit.open(timeout=60) as stream,
    ):
        await stream.send_message(q, end=True)
        async for chunk in stream:
            out.extend(json.loads(r) for r in chunk.records)
    return out


def _summary(r: dict[str, Any]) -> str:
    who = r.get("agent_id") or r.get("actor") or "-"
    d = r.get("details", {})
    what = (d.get("serial") or d.get("jti") or d.get("action") or d.get("method") or "")
    aud = ",".join(r.get("audience", []))
    extra = " ".join(x for x in (str(what), aud, r.get("subject", ""), r.get("reason", "")) if x)
    return f"{r['time']}  {r['seq']:>7}  {r['type']:16} {r['result']:8} {who}  {extra}"


async def audit_list(args: argparse.Namespace) -> int:
    if args.fleet:
        return await fleet_cmds.audit_list_fleet(args, _filter(args), _summary)
    records = await _query(args)
    if args.output == "json":
        print_json(records)
    else:
        for r in records:
            print(_summary(r))
    return 0


async def audit_export(args: argparse.Namespace) -> int:
    from ensign.daemon.audit.export import to_ocsf  # each command imports its own part

    for r in await _query(args):
        doc = to_ocsf(r) if args.format == "ocsf" else r
        sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    return 0


def _filter(args: argparse.Namespace) -> AuditFilter:
    from ensign.daemon.audit import AuditFilter

    return AuditFilter(agent=args.agent, subject=args.subject, delegator=args.delegator,
                       type=args.type, result=args.result, since=args.since or "",
                       until=args.until or "")


def audit_verify(args: argparse.Namespace) -> int:
    if args.fleet:
        return asyncio.run(fleet_cmds.audit_verify_fleet(args))
    from ensign.daemon import config as config_mod
    from ensign.daemon.audit.verify import verify

    data_dir = args.data_dir or config_mod.load(args.config).data_dir
    report = verify(data_dir / "audit", args.from_checkpoint)
    if args.output == "json":
        print_json({"ok": report.ok, "problems": report.problems, "notes": report.notes,
                    "records": report.records, "checkpoints": report.checkpoints,
                    "first_seq": report.first_seq, "last_seq": report.last_seq})
    elif report.ok:
        print(f"audit ok: {report.records} records (seq {report.first_seq}..{report.last_seq}), "
              f"{report.checkpoints} signed checkpoints")
        for note in report.notes:
            print(f"note: {note}")
    if not report.ok:
        raise AuditInvalid(f"audit verification failed: {report.problems[0]}")
    return 0


def audit_archive(args: argparse.Namespace) -> int:
    from ensign.daemon import config as config_mod
    from ensign.daemon.audit.archive import archive

    data_dir = args.data_dir or config_mod.load(args.config).data_dir
    moved = archive(data_dir / "audit", args.to, args.keep)
    print(f"archived {len(moved)} segment(s) to {args.to}" if moved else "nothing to archive")
    return 0
