"""`ensign anomaly list`: the findings of anomaly detection, from the audit trail."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ensign.proto import admin_pb2 as pb
from ensign.proto.admin_grpc import AdminStub

from .common import admin_channel, count, print_json, print_table

Common = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(sub: Any, common: Common) -> None:
    an = sub.add_parser("anomaly", help="anomaly findings (admin socket)")
    asub = an.add_subparsers(dest="anomaly_command", required=True, metavar="SUBCOMMAND",
                             parser_class=type(an))
    ls = common(asub.add_parser("list", help="findings, oldest first"))
    ls.add_argument("--agent", default="")
    ls.add_argument("--limit", type=count, default=0)
    ls.set_defaults(func=anomaly_list)


async def anomaly_list(args: argparse.Namespace) -> int:
    q = pb.AuditQuery(type="anomaly", agent=args.agent, limit=args.limit)
    found: list[dict[str, Any]] = []
    async with (
        admin_channel(args) as ch,
        AdminStub(ch).QueryAudit.open(timeout=60) as stream,
    ):
        await stream.send_message(q, end=True)
        async for chunk in stream:
            found.extend(json.loads(r) for r in chunk.records)
    if args.output == "json":
        print_json(found)
    elif found:
        print_table(("TIME", "AGENT", "ACTION", "FINDING"),
                    [(r["time"], r.get("agent_id") or "-",
                      r.get("details", {}).get("action", "alert"), r.get("reason", ""))
                     for r in found])
    else:
        print("no findings")
    return 0
