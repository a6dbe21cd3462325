"""Registry commands on the admin socket: `ensign agent register|list|show|update|delete`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ensign.daemon.errors import UsageError
from ensign.proto import admin_pb2 as pb
from ensign.proto.admin_grpc import AdminStub

from . import anomaly_cmds, audit_cmds, ops_cmds, role_cmds, token_cmds
from .common import (
    TIMEOUT,
    add_output,
    admin_socket,
    channel,
    duration_seconds,
    iso,
    print_json,
    proto_dict,
    timestamp,
)


def register(sub: Any) -> None:
    agent = sub.add_parser("agent", help="manage the agent registry (admin socket)")
    asub = agent.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND",
                                parser_class=type(agent))

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--admin-socket", help="admin socket (default $ENSIGN_ADMIN_SOCKET, "
                       "then the config's admin_socket_path)")
        p.add_argument("--config", type=Path, help="config file to find the admin socket in")
        add_output(p)
        return p

    def spec_flags(p: argparse.ArgumentParser, *, creating: bool) -> None:
        p.add_argument("--name", required=creating)
        if creating:
            p.add_argument("--kind", choices=["agent", "service"], default="agent")
        p.add_argument("--spiffe-id")
        p.add_argument("--selector", action="append", required=creating, metavar="TYPE:KEY:VALUE",
                       help="all must match the caller (repeatable)")
        p.add_argument("--owner")
        p.add_argument("--purpose")
        p.add_argument("--capability", action="append")
        p.add_argument("--role", action="append")
        p.add_argument("--x509-ttl", type=duration_seconds, metavar="DURATION")
        p.add_argument("--jwt-ttl", type=duration_seconds, metavar="DURATION")
        p.add_argument("--expires-at", type=timestamp, metavar="TIME")
        p.add_argument("--dns-name", action="append")
        p.add_argument("--hint")
        p.add_argument("--federates-with", action="append", metavar="TRUST_DOMAIN",
                       help="also hand this entry the bundle of that federated trust domain "
                            "(repeatable)")
        if creating:
            p.add_argument("--metadata", action="append", metavar="KEY=VALUE", default=[],
                           help="free-form labels; anomaly.action=alert|suspend|off overrides "
                                "anomaly detection for this agent")

    reg = common(asub.add_parser("register", help="create an entry; prints its id"))
    spec_flags(reg, creating=True)
    reg.set_defaults(func=agent_register)

    ls = common(asub.add_parser("list", help="list entries"))
    for flag in ("state", "owner", "capability", "role", "kind", "selector", "name-prefix"):
        ls.add_argument(f"--{flag}", default="")
    ls.set_defaults(func=agent_list)

    show = common(asub.add_parser("show", help="show one entry"))
    show.add_argument("id")
    show.set_defaults(func=agent_show)

    upd = common(asub.add_parser("update", help="change fields of an entry"))
    upd.add_argument("id")
    spec_flags(upd, creating=False)
    upd.set_defaults(func=agent_update)

    rm = common(asub.add_parser("delete", help="delete an entry; its id is never reused"))
    rm.add_argument("id")
    rm.set_defaults(func=agent_delete)

    for name, needs_reason, help_text in (
        ("suspend", True, "stop issuing to an agent at once (reversible)"),
        ("resume", False, "let a suspended agent get SVIDs again"),
        ("decommission", True, "retire an agent for good; its id never comes back"),
    ):
        lp = common(asub.add_parser(name, help=help_text))
        lp.add_argument("id")
        lp.add_argument("--reason", required=needs_reason, default="")
        lp.set_defaults(func=agent_lifecycle, lifecycle=name)

    ap = common(asub.add_parser("apply", help="make the registry match a TOML or YAML file"))
    ap.add_argument("-f", "--file", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    ap.add_argument("--prune", action="store_true",
                    help="decommission live agents the file does not list")
    ap.set_defaults(func=agent_apply)

    role_cmds.register(sub, common)
    audit_cmds.register(sub, common)
    token_cmds.register(sub, common)
    anomaly_cmds.register(sub, common)
    ops_cmds.register(sub, common)



def _agent_dict(a: pb.Agent) -> dict[str, Any]:
    return proto_dict(a)


def _print_agent(a: pb.Agent) -> None:
    rows = [
        ("id", a.id), ("name", a.name), ("kind", a.kind), ("spiffe_id", a.spiffe_id),
        ("state", a.state), ("selectors", ", ".join(a.selectors)),
        ("owner", a.owner or "-"), ("purpose", a.purpose or "-"),
        ("capabilities", ", ".join(a.capabilities) or "-"), ("roles", ", ".join(a.roles) or "-"),
        ("x509_ttl", f"{a.x509_ttl_seconds}s" if a.x509_ttl_seconds else "default"),
        ("jwt_ttl", f"{a.jwt_ttl_seconds}s" if a.jwt_ttl_seconds else "default"),
        ("dns_names", ", ".join(a.dns_names) or "-"), ("hint", a.hint or "-"),
        ("federates_with", ", ".join(a.federates_with) or "-"),
        ("expires_at", iso(a.expires_at)), ("created", iso(a.created_at)),
        ("updated", iso(a.updated_at)), ("revision", str(a.revision)),
    ]
    rows += [(f"metadata.{k}", v) for k, v in sorted(a.metadata.items())]
    for k, v in rows:
        print(f"{k:14} {v}")
    if a.history:
        print("history:")
        for h in a.history:
            reason = f"  ({h.reason})" if h.reason else ""
            print(f"  {iso(h.at)}  {h.from_state or '-'} -> {h.to_state}  by {h.actor}{reason}")


def _metadata(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata {item!r}: write KEY=VALUE")
        out[key] = value
    return out


async def agent_register(args: argparse.Namespace) -> int:
    spec = pb.AgentSpec(
        name=args.name, kind=args.kind, spiffe_id=args.spiffe_id or "",
        selectors=args.selector, owner=args.owner or "", purpose=args.purpose or "",
        capabilities=args.capability or [], roles=args.role or [],
        x509_ttl_seconds=args.x509_ttl or 0, jwt_ttl_seconds=args.jwt_ttl or 0,
        expires_at=args.expires_at or 0, dns_names=args.dns_name or [], hint=args.hint or "",
        metadata=_metadata(args.metadata), federates_with=args.federates_with or [],
    )
    async with channel(admin_socket(args)) as ch:
        agent = await AdminStub(ch).RegisterAgent(pb.RegisterAgentRequest(spec=spec),
                                                  timeout=TIMEOUT)
    if args.output == "json":
        print_json(_agent_dict(agent))
    else:
        print(agent.id)
    return 0


async def agent_list(args: argparse.Namespace) -> int:
    req = pb.ListAgentsRequest(
        state=args.state, owner=args.owner, capability=args.capability, role=args.role,
        kind=args.kind, selector=args.selector, name_prefix=args.name_prefix,
    )
    async with channel(admin_socket(args)) as ch:
        resp = await AdminStub(ch).ListAgents(req, timeout=TIMEOUT)
    if args.output == "json":
        print_json([_agent_dict(a) for a in resp.agents])
    else:
        print(f"{'ID':32} {'NAME':20} {'STATE':10} SPIFFE ID")
        for a in resp.agents:
            print(f"{a.id:32} {a.name:20} {a.state:10} {a.spiffe_id}")
    return 0


async def agent_show(args: argparse.Namespace) -> int:
    async with channel(admin_socket(args)) as ch:
        agent = await AdminStub(ch).GetAgent(pb.GetAgentRequest(id=args.id), timeout=TIMEOUT)
    if args.output == "json":
        print_json(_agent_dict(agent))
    else:
        _print_agent(agent)
    return 0


async def agent_update(args: argparse.Namespace) -> int:
    req = pb.UpdateAgentRequest(id=args.id)
    for flag, field in (("name", "name"), ("spiffe_id", "spiffe_id"), ("owner", "owner"),
                        ("purpose", "purpose"), ("hint", "hint"),
                        ("x509_ttl", "x509_ttl_seconds"), ("jwt_ttl", "jwt_ttl_seconds"),
                        ("expires_at", "expires_at")):
        value = getattr(args, flag)
        if value is not None:
            setattr(req, field, value)
    for flag, field in (("selector", "selectors"), ("dns_name", "dns_names"),
                        ("capability", "capabilities"), ("role", "roles"),
                        ("federates_with", "federates_with")):
        values = getattr(args, flag)
        if values is not None:
            getattr(req, field).values.extend(values)
    async with channel(admin_socket(args)) as ch:
        agent = await AdminStub(ch).UpdateAgent(req, timeout=TIMEOUT)
    if args.output == "json":
        print_json(_agent_dict(agent))
    else:
        print(f"{agent.id} revision {agent.revision}")
    return 0


async def agent_delete(args: argparse.Namespace) -> int:
    async with channel(admin_socket(args)) as ch:
        await AdminStub(ch).DeleteAgent(pb.DeleteAgentRequest(id=args.id), timeout=TIMEOUT)
    if args.output == "json":
        print_json({"deleted": args.id})
    else:
        print(f"deleted {args.id}")
    return 0


async def agent_lifecycle(args: argparse.Namespace) -> int:
    req = pb.LifecycleRequest(id=args.id, reason=args.reason)
    async with channel(admin_socket(args)) as ch:
        stub = AdminStub(ch)
        method = {"suspend": stub.SuspendAgent, "resume": stub.ResumeAgent,
                  "decommission": stub.DecommissionAgent}[args.lifecycle]
        agent = await method(req, timeout=TIMEOUT)
    if args.output == "json":
        print_json(_agent_dict(agent))
    else:
        print(f"{agent.id} {agent.state}")
    return 0


async def agent_apply(args: argparse.Namespace) -> int:
    from . import apply_file  # its pydantic models: this command's alone

    req = apply_file.to_request(apply_file.load(args.file), dry_run=args.dry_run,
                                prune=args.prune)
    async with channel(admin_socket(args)) as ch:
        resp = await AdminStub(ch).Apply(req, timeout=120)
    if args.output == "json":
        print_json({"applied": resp.applied,
                    "steps": [{"action": s.action, "target": s.target, "detail": s.detail}
                              for s in resp.steps]})
        return 0
    verb = "would" if args.dry_run else "did"
    if not resp.steps:
        print("registry already matches the file: nothing to do")
    for s in resp.steps:
        print(f"{s.action:13} {s.target}  {s.detail}")
    if resp.steps:
        print(f"# {verb} apply {len(resp.steps)} change(s)")
    return 0
