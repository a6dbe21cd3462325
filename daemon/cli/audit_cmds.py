"""`ensign audit list|export|verify|archive`: read, check, ship and retire the audit trail.

`list` and `export` ask the daemon (admin socket). `verify` reads the files, with or without a
daemon. `archive` goes through the daemon when it runs: the daemon streams the old segments,
this command stores them in the archive directory with the caller's own permissions and checks
that the archive verifies on its own, and only then does the daemon remove them (on its audit
writer thread, so nothing races a write or a rotation). With `--data-dir` and the daemon
stopped, the same steps run on the files directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensign.daemon.errors import EnsignError, InvalidData, NotFound, UsageError
from ensign.daemon.files import DirLock
from ensign.daemon.units import parse_duration
from ensign.proto import admin_pb2 as pb
from ensign.proto.admin_grpc import AdminStub

from . import fleet_cmds
from .common import (
    TIMEOUT,
    add_admin_flags,
    add_output,
    admin_call,
    admin_channel,
    count,
    print_json,
    print_table,
)

if TYPE_CHECKING:  # the audit package and the config: imported by the commands using them
    from ensign.daemon.audit import AuditFilter, Report

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

    ex = asub.add_parser("export", help="records as JSON lines or OCSF (admin socket)")
    add_admin_flags(ex)  # its own output formats, no text|json
    filters(ex)
    ex.add_argument("-o", "--output", "--format", dest="output", choices=["jsonl", "ocsf"],
                    default="jsonl", help="output format (default jsonl)")
    ex.set_defaults(func=audit_export)

    arc = common(asub.add_parser(
        "archive", help="move old segments to DIR (through the daemon, or with --data-dir "
                        "when it is stopped); both parts keep verifying"))
    arc.add_argument("--to", type=Path, required=True, metavar="DIR",
                     help="the archive directory (created 0700; may hold earlier archives of "
                          "the same log)")
    arc.add_argument("--keep", type=count, default=1, help="newest segments to keep (default 1)")
    arc.add_argument("--data-dir", type=Path,
                     help="work on these files directly; the daemon must be stopped")
    arc.set_defaults(func=audit_archive)

    ver = asub.add_parser("verify", help="recompute the chain and checkpoints (offline)")
    ver.add_argument("--config", type=Path, help="config naming data_dir")
    ver.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="a data directory, or an archive directory (instead of --config)")
    ver.add_argument("--from-checkpoint", type=count, metavar="SEQ",
                     help="check only the records after this signed checkpoint")
    add_output(ver)
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
        admin_channel(args) as ch,
        AdminStub(ch).QueryAudit.open(timeout=60) as stream,
    ):
        await stream.send_message(q, end=True)
        async for chunk in stream:
            out.extend(json.loads(r) for r in chunk.records)
    return out


LIST_HEADER = ("TIME", "SEQ", "TYPE", "RESULT", "WHO", "DETAIL")


def _row(r: dict[str, Any]) -> tuple[str, ...]:
    who = r.get("agent_id") or r.get("actor") or "-"
    d = r.get("details", {})
    what = (d.get("serial") or d.get("jti") or d.get("action") or d.get("method") or "")
    aud = ",".join(r.get("audience", []))
    extra = " ".join(x for x in (str(what), aud, r.get("subject", ""), r.get("reason", "")) if x)
    return (str(r["time"]), str(r["seq"]), str(r["type"]), str(r["result"]), str(who),
            extra or "-")


async def audit_list(args: argparse.Namespace) -> int:
    if args.fleet:
        return await fleet_cmds.audit_list_fleet(args, _filter(args), LIST_HEADER, _row)
    records = await _query(args)
    if args.output == "json":
        print_json(records)
    else:
        print_table(LIST_HEADER, [_row(r) for r in records])
    return 0


async def audit_export(args: argparse.Namespace) -> int:
    from ensign.daemon.audit.export import to_ocsf  # each command imports its own part

    for r in await _query(args):
        doc = to_ocsf(r) if args.output == "ocsf" else r
        sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    return 0


def audit_dir_of(path: Path) -> Path:
    """A data directory holds the log in `audit/`; an archive directory is the log itself."""
    from ensign.daemon.audit import PUBLIC_KEY, segments

    if (path / "audit").is_dir():
        return path / "audit"
    if (path / PUBLIC_KEY).exists() or segments(path):
        return path
    return path / "audit"  # verify names what is missing


def _report_json(report: Report) -> dict[str, Any]:
    return {"ok": report.ok, "problems": report.problems, "notes": report.notes,
            "records": report.records, "checkpoints": report.checkpoints,
            "first_seq": report.first_seq, "last_seq": report.last_seq}


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
    report = verify(audit_dir_of(data_dir), args.from_checkpoint)
    if args.output == "json":
        print_json(_report_json(report))
    elif report.ok:
        print(f"audit ok: {report.records} records (seq {report.first_seq}..{report.last_seq}), "
              f"{report.checkpoints} signed checkpoints")
        for note in report.notes:
            print(f"note: {note}")
    if not report.ok:
        raise AuditInvalid(f"audit verification failed: {report.problems[0]}")
    return 0


def _check_archive(dest: Path) -> Report:
    from ensign.daemon.audit import verify

    report = verify(dest)
    if not report.ok:
        raise AuditInvalid(f"the archive in {dest} does not verify, so nothing was removed from "
                           f"the live log: {report.problems[0]}")
    return report


async def audit_archive(args: argparse.Namespace) -> int:
    dest = args.to.resolve()
    if args.keep < 1:
        raise UsageError("--keep must be at least 1: the newest segment is the open one")
    if args.data_dir is not None:
        removed, report = _archive_offline(args.data_dir, dest, args.keep)
    else:
        removed, report = await _archive_through_daemon(args, dest)
    if args.output == "json":
        print_json({"archived": removed, "to": str(dest),
                    "archive": _report_json(report) if report else None})
    elif removed and report is not None:
        print(f"archived {len(removed)} segment(s) to {dest}: records {report.first_seq}.."
              f"{report.last_seq}; the live log continues from seq {report.last_seq + 1}")
    else:
        print(f"nothing to archive: the log has no more than {args.keep} segment(s)")
    return 0


def _archive_offline(data_dir: Path, dest: Path, keep: int) -> tuple[list[str], Report | None]:
    from ensign.daemon.audit import drop, plan, store_plan

    if not (data_dir / "audit").is_dir():
        raise NotFound(f"{data_dir}: no audit log here (no audit/ directory)")
    lock = DirLock.take(data_dir, "data_dir", "archive through it instead: `ensign audit "
                        "archive --to DIR` without --data-dir")
    try:
        audit_dir = data_dir / "audit"
        p = plan(audit_dir, keep)
        if not p.segments:
            return [], None
        written = store_plan(p, dest)
        report = _check_archive(dest)
        return drop(audit_dir, written), report
    finally:
        lock.release()


async def _archive_through_daemon(args: argparse.Namespace,
                                  dest: Path) -> tuple[list[str], Report | None]:
    from ensign.daemon.audit import Archive

    out: Archive | None = None
    parts: dict[str, list[bytes]] = {}
    async with (
        admin_channel(args) as ch,
        AdminStub(ch).ExportAuditArchive.open(timeout=600) as stream,
    ):
        await stream.send_message(pb.ExportAuditArchiveRequest(keep=args.keep), end=True)
        async for chunk in stream:
            if out is None:
                out = Archive(dest)
            parts.setdefault(chunk.name, []).append(chunk.data)
            if chunk.end:
                out.store(chunk.name, b"".join(parts.pop(chunk.name)))
    if out is None:
        return [], None
    if parts:
        raise InvalidData(f"the daemon's archive stream ended inside {', '.join(parts)}")
    report = _check_archive(dest)
    proofs = [pb.ArchivedSegment(name=n, sha256=h) for n, h in sorted(out.written.items())]
    resp = await admin_call(args, lambda s: s.DropArchivedAudit(
        pb.DropArchivedAuditRequest(segments=proofs), timeout=TIMEOUT * 6))
    return list(resp.removed), report
