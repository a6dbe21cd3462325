"""`ensign fleet init|status`, and the database side of `ensign audit list|verify --fleet`.

These talk to the fleet's PostgreSQL directly (not through a daemon), so they work with any node
down. The URL is `--database-url`, else `$ENSIGN_DATABASE_URL`, else the config's
`[fleet] admin_database_url`, else its `database_url`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensign.daemon.errors import EnsignError, UsageError

from .common import add_output, print_json, print_table

if TYPE_CHECKING:  # psycopg, the audit package, the config: imported by the commands using them
    from ensign.daemon.audit import AuditFilter

ENV = "ENSIGN_DATABASE_URL"


class FleetAuditInvalid(EnsignError):
    exit_code = 65  # EX_DATAERR
    public_message = "a node's shipped audit trail does not verify"


def add_database(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", metavar="URL",
                   help=f"the fleet's PostgreSQL (default ${ENV}, then the config's [fleet] "
                        "admin_database_url or database_url)")


def database_url(args: argparse.Namespace) -> str:
    url = getattr(args, "database_url", None) or os.environ.get(ENV, "")
    if url:
        return str(url)
    from ensign.daemon import config as config_mod

    path = getattr(args, "config", None)
    if path is None and not os.environ.get("ENSIGN_CONFIG") \
            and not config_mod.DEFAULT_CONFIG_PATH.exists():
        raise UsageError(f"no fleet database: give --database-url, set ${ENV}, or --config")
    cfg = config_mod.load(path)
    url = cfg.fleet.admin_database_url or cfg.fleet.database_url
    if not url:
        raise UsageError("this node is not in a fleet ([fleet] database_url is empty)")
    return url


def register(sub: Any) -> None:
    fleet = sub.add_parser("fleet", help="many nodes on one PostgreSQL")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="SUBCOMMAND",
                                parser_class=type(fleet))
    ini = fsub.add_parser("init", help="create or upgrade the fleet's schema (idempotent)")
    ini.add_argument("--database-url", required=True, metavar="URL",
                     help="as the database's owner (creates tables, roles and policies)")
    ini.add_argument("--node", action="append", default=[], metavar="NAME",
                     help="make login role NAME a node (member of ensign_node; repeatable)")
    ini.add_argument("--admin", action="append", default=[], metavar="NAME",
                     help="make login role NAME an admin (member of ensign_admin; repeatable)")
    ini.set_defaults(func=fleet_init)

    st = fsub.add_parser("status", help="every node: heartbeat, registry version, audit shipped, "
                                        "JWT key ids")
    add_database(st)
    st.add_argument("--config", type=Path, help="config naming the fleet database")
    add_output(st)
    st.set_defaults(func=fleet_status)


async def fleet_init(args: argparse.Namespace) -> int:
    from ensign.daemon.fleet import init

    before, after = await init(args.database_url, args.node, args.admin)
    if before == after:
        print(f"fleet schema at version {after} (already current)")
    elif before == 0:
        print(f"fleet schema created at version {after}")
    else:
        print(f"fleet schema upgraded from version {before} to {after}")
    for name in args.node:
        print(f"node role {name}: member of ensign_node")
    for name in args.admin:
        print(f"admin role {name}: member of ensign_admin")
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


async def fleet_status(args: argparse.Namespace) -> int:
    from ensign.daemon.fleet import SCHEMA_VERSION
    from ensign.daemon.fleet import report as fleet_report

    st = await fleet_report.status(database_url(args))
    if args.output == "json":
        print_json({
            "database": st.database, "schema_version": st.schema_version,
            "registry_version": st.registry_version,
            "nodes": [{"name": n.name, "heartbeat_at": n.heartbeat_at.isoformat(),
                       "heartbeat_age_seconds": round(n.heartbeat_age, 3),
                       "started_at": n.started_at.isoformat(), "software": n.software,
                       "registry_version": n.registry_version, "audit_seq": n.audit_seq,
                       "audit_shipped": n.audit_shipped, "audit_behind": n.audit_behind,
                       "problem": n.problem, "jwt_keys": n.keys,
                       "delegation_keys": n.delegation_keys} for n in st.nodes],
        })
        return 0
    print(f"database {st.database}: schema {st.schema_version} (this release "
          f"{SCHEMA_VERSION}), registry version {st.registry_version}, {len(st.nodes)} node(s)")
    rows = [("NODE", "HEARTBEAT", "REGISTRY", "AUDIT SHIPPED", "JWT KEYS", "DELEGATION KEYS")]
    for n in st.nodes:
        registry = f"{n.registry_version}" + (
            "" if n.registry_version >= st.registry_version
            else f" ({st.registry_version - n.registry_version} behind)")
        audit = f"{n.audit_shipped}/{n.audit_seq}" + (
            f" ({n.audit_behind} behind)" if n.audit_behind else "")
        rows.append((n.name, _age(n.heartbeat_age), registry, audit, ", ".join(n.keys) or "-",
                     ", ".join(n.delegation_keys) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    for n in st.nodes:
        if n.problem:
            print(f"{n.name}: {n.problem}")
    return 0


async def audit_list_fleet(args: argparse.Namespace, flt: AuditFilter, header: Sequence[str],
                           row: Callable[[dict[str, Any]], Sequence[str]]) -> int:
    from ensign.daemon.fleet import report as fleet_report

    rows = await fleet_report.records(database_url(args), flt, args.limit)
    if args.output == "json":
        print_json([{"node": node, **json.loads(line)} for node, line in rows])
    else:
        print_table(("NODE", *header), [(node, *row(json.loads(line))) for node, line in rows])
    return 0


async def audit_verify_fleet(args: argparse.Namespace) -> int:
    from ensign.daemon.fleet import report as fleet_report

    verdicts = await fleet_report.verify(database_url(args))
    if args.output == "json":
        print_json([{"node": v.node, "ok": v.report.ok, "problems": v.report.problems,
                     "notes": v.report.notes, "records": v.report.records,
                     "checkpoints": v.report.checkpoints, "first_seq": v.report.first_seq,
                     "last_seq": v.report.last_seq, "local_seq": v.local_seq,
                     "shipped": v.shipped, "behind": v.behind,
                     "heartbeat_age_seconds": round(v.heartbeat_age, 3)} for v in verdicts])
    else:
        for v in verdicts:
            r = v.report
            state = "ok" if r.ok else f"FAILED: {r.problems[0]}"
            print(f"{v.node}: {state}; {r.records} records (seq {r.first_seq}..{r.last_seq}), "
                  f"{r.checkpoints} signed checkpoints; {v.behind} behind its local log "
                  f"(seq {v.local_seq} at its last heartbeat, {_age(v.heartbeat_age)})")
    bad = [v for v in verdicts if not v.report.ok]
    if bad:
        raise FleetAuditInvalid(f"fleet audit verification failed: {bad[0].report.problems[0]}")
    if not verdicts:
        print("no nodes in the fleet database")
    return 0
