"""Registry commands on the admin socket: `ensign agent register|list|show|update|delete`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ensign.daemon.errors import UsageError
from ensign.proto import admin_pb2 as pb

from . import anomaly_cmds, audit_cmds, ops_cmds, role_cmds, token_cmds
from .common import (
    TIMEOUT,
    add_admin_flags,
    add_output,
    admin_call,
    duration_seconds,
    fmt_duration,
    fmt_time,
    message_json,
    print_fields,
    print_json,
    print_table,
    timestamp,
)

#: Lists `agent update` can replace or clear (flag, request field); selectors cannot be cleared.
LISTS = (("selector", "selectors"), ("dns_name", "dns_names"), ("capability", "capabilities"),
         ("role", "roles"), ("federates_with", "federates_with"))


def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of every admin command: where the admin socket is, and the output format."""
    add_admin_flags(p)
    add_output(p)
    return p


def register(sub: Any) -> None:
    agent = sub.add_parser("agent", help="manage the agent registry (admin socket)")
    asub = agent.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND",
                                parser_class=type(agent))

    def spec_flags(p: argparse.ArgumentParser, *, creating: bool) -> None:
        p.add_argument("--name", required=creating)
        p.add_argument("--kind", choices=["agent", "service"],
                       default="agent" if creating else None)
        p.add_argument("--spiffe-id")
        p.add_argument("--selector", action="append", required=creating, metavar="TYPE:KEY:VALUE",
                       help="all must match the caller (repeatable)")
        p.add_argument("--owner")
        p.add_argument("--purpose")
        p.add_argument("--capability", action="append")
        p.add_argument("--role", action="append")
        p.add_argument("--x509-ttl", type=duration_seconds, metavar="DURATION")
        p.add_argument("--jwt-ttl", type=duration_seconds, metavar="DURATION")
        p.add_argument("--expires-at", type=timestamp, metavar="TIME",
                       help="RFC 3339, or a duration from now such as 30d; must lie ahead")
        p.add_argument("--dns-name", action="append")
        p.add_argument("--hint")
        p.add_argument("--federates-with", action="append", metavar="TRUST_DOMAIN",
                       help="also hand this entry the bundle of that federated trust domain "
                            "(repeatable)")
        p.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                       default=[] if creating else None,
                       help="free-form labels; anomaly.action=alert|suspend|off overrides "
                            "anomaly detection for this agent")
        if not creating:
            for flag, what in (("capabilities", "capability"), ("roles", "role"),
                               ("dns-names", "DNS name"),
                               ("federates-with", "federated trust domain"),
                               ("metadata", "label")):
                p.add_argument(f"--clear-{flag}", action="store_true",
                               help=f"remove every {what}")
            p.add_argument("--no-expiry", action="store_true", help="never expire")

    reg = common(asub.add_parser("register", help="create an entry; prints its id"))
    spec_flags(reg, creating=True)
    reg.set_defaults(func=agent_register)

    ls = common(asub.add_parser("list", help="list entries"))
    for flag in ("state", "owner", "capability", "role", "kind", "selector", "name-prefix"):
        ls.add_argument(f"--{flag}", default="")
    ls.set_defaults(func=agent_list)

    show = common(asub.add_parser("show", help="show one entry with its state history"))
    show.add_argument("id")
    show.set_defaults(func=agent_show)

    upd = common(asub.add_parser("update", help="change fields of an entry; a list flag "
                                 "replaces that list (give it \"\" or --clear-X to empty it)"))
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



def agent_json(a: pb.Agent, *, history: bool = False) -> dict[str, Any]:
    """An agent as JSON; `history` only where the daemon fills it (`show`)."""
    return message_json(a, drop=() if history else ("history",))


def _print_agent(a: pb.Agent) -> None:
    rows: list[tuple[str, object]] = [
        ("id", a.id), ("name", a.name), ("kind", a.kind), ("spiffe_id", a.spiffe_id),
        ("state", a.state), ("selectors", ", ".join(a.selectors)),
        ("owner", a.owner or "-"), ("purpose", a.purpose or "-"),
        ("capabilities", ", ".join(a.capabilities) or "-"), ("roles", ", ".join(a.roles) or "-"),
        ("x509_ttl", fmt_duration(a.x509_ttl_seconds, "default")),
        ("jwt_ttl", fmt_duration(a.jwt_ttl_seconds, "default")),
        ("dns_names", ", ".join(a.dns_names) or "-"), ("hint", a.hint or "-"),
        ("federates_with", ", ".join(a.federates_with) or "-"),
        ("expires_at", fmt_time(a.expires_at)), ("created", fmt_time(a.created_at)),
        ("updated", fmt_time(a.updated_at)), ("revision", a.revision),
    ]
    rows += [(f"metadata.{k}", v) for k, v in sorted(a.metadata.items())]
    print_fields(rows)
    if a.history:
        print("history:")
        for h in a.history:
            reason = f"  ({h.reason})" if h.reason else ""
            print(f"  {fmt_time(h.at)}  {h.from_state or '-'} -> {h.to_state}  by {h.actor}"
                  f"{reason}")


def _metadata(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata {item!r}: write KEY=VALUE")
        out[key] = value
    return out


def _values(items: list[str] | None) -> list[str]:
    """A list flag's values; `--role ""` alone means the empty list."""
    return [v for v in items or [] if v]


async def agent_register(args: argparse.Namespace) -> int:
    spec = pb.AgentSpec(
        name=args.name, kind=args.kind, spiffe_id=args.spiffe_id or "",
        selectors=args.selector, owner=args.owner or "", purpose=args.purpose or "",
        capabilities=_values(args.capability), roles=_values(args.role),
        x509_ttl_seconds=args.x509_ttl or 0, jwt_ttl_seconds=args.jwt_ttl or 0,
        expires_at=args.expires_at or 0, dns_names=_values(args.dns_name),
        hint=args.hint or "", metadata=_metadata(args.metadata),
        federates_with=_values(args.federates_with),
    )
    agent = await admin_call(args, lambda s: s.RegisterAgent(
        pb.RegisterAgentRequest(spec=spec), timeout=TIMEOUT))
    if args.output == "json":
        print_json(agent_json(agent))
    else:
        print(agent.id)
    return 0


async def agent_list(args: argparse.Namespace) -> int:
    req = pb.ListAgentsRequest(
        state=args.state, owner=args.owner, capability=args.capability, role=args.role,
        kind=args.kind, selector=args.selector, name_prefix=args.name_prefix,
    )
    resp = await admin_call(args, lambda s: s.ListAgents(req, timeout=TIMEOUT))
    if args.output == "json":
        print_json([agent_json(a) for a in resp.agents])
    else:
        print_table(("ID", "NAME", "STATE", "OWNER", "SPIFFE ID"),
                    [(a.id, a.name, a.state, a.owner or "-", a.spiffe_id) for a in resp.agents])
    return 0


async def agent_show(args: argparse.Namespace) -> int:
    agent = await admin_call(args, lambda s: s.GetAgent(pb.GetAgentRequest(id=args.id),
                                                        timeout=TIMEOUT))
    if args.output == "json":
        print_json(agent_json(agent, history=True))
    else:
        _print_agent(agent)
    return 0


def update_request(args: argparse.Namespace) -> pb.UpdateAgentRequest:
    req = pb.UpdateAgentRequest(id=args.id)
    for flag, field in (("name", "name"), ("kind", "kind"), ("spiffe_id", "spiffe_id"),
                        ("owner", "owner"), ("purpose", "purpose"), ("hint", "hint"),
                        ("x509_ttl", "x509_ttl_seconds"), ("jwt_ttl", "jwt_ttl_seconds"),
                        ("expires_at", "expires_at")):
        value = getattr(args, flag)
        if value is not None:
            setattr(req, field, value)
    if args.no_expiry:
        if args.expires_at is not None:
            raise UsageError("--no-expiry and --expires-at exclude each other")
        req.expires_at = 0
    for flag, field in LISTS:
        values = getattr(args, flag)
        cleared = getattr(args, f"clear_{field}", False)
        if values is not None and cleared:
            raise UsageError(f"--{flag.replace('_', '-')} and --clear-{field.replace('_', '-')} "
                             "exclude each other")
        if values is not None or cleared:
            getattr(req, field).SetInParent()
            getattr(req, field).values.extend(_values(values))
    if args.metadata is not None and args.clear_metadata:
        raise UsageError("--metadata and --clear-metadata exclude each other")
    if args.metadata is not None or args.clear_metadata:
        req.metadata.SetInParent()
        req.metadata.values.update(_metadata(args.metadata or []))
    return req


async def agent_update(args: argparse.Namespace) -> int:
    req = update_request(args)
    agent = await admin_call(args, lambda s: s.UpdateAgent(req, timeout=TIMEOUT))
    if args.output == "json":
        print_json(agent_json(agent))
    else:
        print(f"{agent.id} revision {agent.revision}")
    return 0


async def agent_delete(args: argparse.Namespace) -> int:
    await admin_call(args, lambda s: s.DeleteAgent(pb.DeleteAgentRequest(id=args.id),
                                                   timeout=TIMEOUT))
    if args.output == "json":
        print_json({"deleted": args.id})
    else:
        print(f"deleted {args.id}")
    return 0


async def agent_lifecycle(args: argparse.Namespace) -> int:
    req = pb.LifecycleRequest(id=args.id, reason=args.reason)

    def call(stub: Any) -> Any:
        method = {"suspend": stub.SuspendAgent, "resume": stub.ResumeAgent,
                  "decommission": stub.DecommissionAgent}[args.lifecycle]
        return method(req, timeout=TIMEOUT)

    agent = await admin_call(args, call)
    if args.output == "json":
        print_json(agent_json(agent))
    else:
        print(f"{agent.id} {agent.state}")
    return 0


async def agent_apply(args: argparse.Namespace) -> int:
    from . import apply_file  # its pydantic models: this command's alone

    req = apply_file.to_request(apply_file.load(args.file), dry_run=args.dry_run,
                                prune=args.prune)
    resp = await admin_call(args, lambda s: s.Apply(req, timeout=120))
    if args.output == "json":
        print_json({"applied": resp.applied,
                    "steps": [{"action": s.action, "target": s.target, "detail": s.detail}
                              for s in resp.steps]})
        return 0
    verb = "would" if args.dry_run else "did"
    if not resp.steps:
        print("registry already matches the file: nothing to do")
        return 0
    print_table(("ACTION", "TARGET", "DETAIL"),
                [(s.action, s.target, s.detail) for s in resp.steps])
    print(f"# {verb} apply {len(resp.steps)} change(s)")
    return 0
