"""`ensign role create|list|show|update|delete`: what the holders of a role may ask for."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ensign.proto import admin_pb2 as pb

from .common import (
    TIMEOUT,
    admin_call,
    duration_seconds,
    fmt_duration,
    fmt_time,
    message_json,
    print_fields,
    print_json,
    print_table,
)

Common = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(sub: Any, common: Common) -> None:
    role = sub.add_parser("role", help="manage roles (admin socket)")
    rsub = role.add_subparsers(dest="role_command", required=True, metavar="SUBCOMMAND",
                               parser_class=type(role))

    def flags(p: argparse.ArgumentParser, creating: bool) -> None:
        p.add_argument("--audience", action="append", required=creating,
                       help="allowed audience; a trailing * is a prefix wildcard (repeatable)")
        p.add_argument("--scope", action="append",
                       help="scope it may be delegated (repeatable; --scope \"\" clears)")
        p.add_argument("--max-ttl", type=duration_seconds, metavar="DURATION")
        p.add_argument("--may-act-for-users", action=argparse.BooleanOptionalAction,
                       default=False if creating else None)
        p.add_argument("--may-redelegate", action=argparse.BooleanOptionalAction,
                       default=False if creating else None)
        p.add_argument("--may-introspect", action=argparse.BooleanOptionalAction,
                       default=False if creating else None,
                       help="holders may call the HTTPS introspection endpoint")

    create = common(rsub.add_parser("create", help="create a role"))
    create.add_argument("name")
    flags(create, True)
    create.set_defaults(func=role_create)
    ls = common(rsub.add_parser("list", help="list roles"))
    ls.set_defaults(func=role_list)
    show = common(rsub.add_parser("show", help="show a role and the agents holding it"))
    show.add_argument("name")
    show.set_defaults(func=role_show)
    upd = common(rsub.add_parser("update", help="change a role; lists are replaced"))
    upd.add_argument("name")
    flags(upd, False)
    upd.set_defaults(func=role_update)
    rm = common(rsub.add_parser("delete", help="delete a role no agent holds"))
    rm.add_argument("name")
    rm.set_defaults(func=role_delete)


def role_json(r: pb.Role) -> dict[str, Any]:
    return message_json(r)


def _print(r: pb.Role) -> None:
    rows: list[tuple[str, object]] = [
        ("name", r.name), ("audiences", ", ".join(r.audiences)),
        ("scopes", ", ".join(r.scopes) or "-"), ("max_ttl", fmt_duration(r.max_ttl_seconds)),
        ("may_act_for_users", str(r.may_act_for_users).lower()),
        ("may_redelegate", str(r.may_redelegate).lower()),
        ("may_introspect", str(r.may_introspect).lower()),
        ("updated", f"{fmt_time(r.updated_at)}  (revision {r.revision})"),
    ]
    if r.holders:
        rows.append(("holders", ", ".join(r.holders)))
    print_fields(rows)


def _values(items: list[str] | None) -> list[str]:
    return [v for v in items or [] if v]


async def role_create(args: argparse.Namespace) -> int:
    req = pb.Role(name=args.name, audiences=_values(args.audience), scopes=_values(args.scope),
                  max_ttl_seconds=args.max_ttl or 0, may_act_for_users=args.may_act_for_users,
                  may_redelegate=args.may_redelegate, may_introspect=args.may_introspect)
    role = await admin_call(args, lambda s: s.CreateRole(req, timeout=TIMEOUT))
    print_json(role_json(role)) if args.output == "json" else print(role.name)
    return 0


async def role_list(args: argparse.Namespace) -> int:
    resp = await admin_call(args, lambda s: s.ListRoles(pb.ListRolesRequest(), timeout=TIMEOUT))
    if args.output == "json":
        print_json([role_json(r) for r in resp.roles])
    else:
        print_table(("NAME", "MAX TTL", "AUDIENCES", "SCOPES"),
                    [(r.name, fmt_duration(r.max_ttl_seconds), ", ".join(r.audiences),
                      ", ".join(r.scopes) or "-") for r in resp.roles])
    return 0


async def role_show(args: argparse.Namespace) -> int:
    role = await admin_call(args, lambda s: s.GetRole(pb.GetRoleRequest(name=args.name),
                                                      timeout=TIMEOUT))
    print_json(role_json(role)) if args.output == "json" else _print(role)
    return 0


async def role_update(args: argparse.Namespace) -> int:
    req = pb.UpdateRoleRequest(name=args.name)
    if args.audience is not None:
        req.audiences.SetInParent()
        req.audiences.values.extend(_values(args.audience))
    if args.scope is not None:
        req.scopes.SetInParent()
        req.scopes.values.extend(_values(args.scope))
    if args.max_ttl is not None:
        req.max_ttl_seconds = args.max_ttl
    if args.may_act_for_users is not None:
        req.may_act_for_users = args.may_act_for_users
    if args.may_redelegate is not None:
        req.may_redelegate = args.may_redelegate
    if args.may_introspect is not None:
        req.may_introspect = args.may_introspect
    role = await admin_call(args, lambda s: s.UpdateRole(req, timeout=TIMEOUT))
    if args.output == "json":
        print_json(role_json(role))
    else:
        print(f"{role.name} revision {role.revision}")
    return 0


async def role_delete(args: argparse.Namespace) -> int:
    await admin_call(args, lambda s: s.DeleteRole(pb.DeleteRoleRequest(name=args.name),
                                                  timeout=TIMEOUT))
    print_json({"deleted": args.name}) if args.output == "json" else print(f"deleted {args.name}")
    return 0
