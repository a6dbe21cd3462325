"""`ensign role create|list|show|update|delete`: what the holders of a role may ask for."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict

from ensign.proto import admin_pb2 as pb
from ensign.proto.admin_grpc import AdminStub

from .common import TIMEOUT, admin_socket, channel, duration_seconds, iso, print_json

Common = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(sub: Any, common: Common) -> None:
    role = sub.add_parser("role", help="manage roles (admin socket)")
    rsub = role.add_subparsers(dest="role_command", required=True, metavar="SUBCOMMAND",
                               parser_class=type(role))

    def flags(p: argparse.ArgumentParser, creating: bool) -> None:
        p.add_argument("--audience", action="append", required=creating,
                       help="allowed audience; a trailing * is a prefix wildcard (repeatable)")
        p.add_argument("--scope", action="append", help="scope it may be delegated (repeatable)")
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


def _dict(r: pb.Role) -> dict[str, Any]:
    return MessageToDict(r, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def _print(r: pb.Role) -> None:
    print(f"name              {r.name}")
    print(f"audiences         {', '.join(r.audiences)}")
    print(f"scopes            {', '.join(r.scopes) or '-'}")
    print(f"max_ttl           {f'{r.max_ttl_seconds}s' if r.max_ttl_seconds else '-'}")
    print(f"may_act_for_users {str(r.may_act_for_users).lower()}")
    print(f"may_redelegate    {str(r.may_redelegate).lower()}")
    print(f"may_introspect    {str(r.may_introspect).lower()}")
    print(f"updated           {iso(r.updated_at)}  (revision {r.revision})")
    if r.holders:
        print(f"holders           {', '.join(r.holders)}")


def _sock(args: argparse.Namespace) -> str:
    return admin_socket(args)


async def role_create(args: argparse.Namespace) -> int:
    req = pb.Role(name=args.name, audiences=args.audience, scopes=args.scope or [],
                  max_ttl_seconds=args.max_ttl or 0, may_act_for_users=args.may_act_for_users,
                  may_redelegate=args.may_redelegate, may_introspect=args.may_introspect)
    async with channel(_sock(args)) as ch:
        role = await AdminStub(ch).CreateRole(req, timeout=TIMEOUT)
    print_json(_dict(role)) if args.output == "json" else print(role.name)
    return 0


async def role_list(args: argparse.Namespace) -> int:
    async with channel(_sock(args)) as ch:
        resp = await AdminStub(ch).ListRoles(pb.ListRolesRequest(), timeout=TIMEOUT)
    if args.output == "json":
        print_json([_dict(r) for r in resp.roles])
    else:
        print(f"{'NAME':24} {'MAX TTL':8} AUDIENCES")
        for r in resp.roles:
            ttl = f"{r.max_ttl_seconds}s" if r.max_ttl_seconds else "-"
            print(f"{r.name:24} {ttl:8} {', '.join(r.audiences)}")
    return 0


async def role_show(args: argparse.Namespace) -> int:
    async with channel(_sock(args)) as ch:
        role = await AdminStub(ch).GetRole(pb.GetRoleRequest(name=args.name), timeout=TIMEOUT)
    print_json(_dict(role)) if args.output == "json" else _print(role)
    return 0


async def role_update(args: argparse.Namespace) -> int:
    req = pb.UpdateRoleRequest(name=args.name)
    if args.audience is not None:
        req.audiences.values.extend(args.audience)
    if args.scope is not None:
        req.scopes.values.extend(args.scope)
    if args.max_ttl is not None:
        req.max_ttl_seconds = args.max_ttl
    if args.may_act_for_users is not None:
        req.may_act_for_users = args.may_act_for_users
    if args.may_redelegate is not None:
        req.may_redelegate = args.may_redelegate
    if args.may_introspect is not None:
        req.may_introspect = args.may_introspect
    async with channel(_sock(args)) as ch:
        role = await AdminStub(ch).UpdateRole(req, timeout=TIMEOUT)
    if args.output == "json":
        print_json(_dict(role))
    else:
        print(f"{role.name} revision {role.revision}")
    return 0


async def role_delete(args: argparse.Namespace) -> int:
    async with channel(_sock(args)) as ch:
        await AdminStub(ch).DeleteRole(pb.DeleteRoleRequest(name=args.name), timeout=TIMEOUT)
    print_json({"deleted": args.name}) if args.output == "json" else print(f"deleted {args.name}")
    return 0
