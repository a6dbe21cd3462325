"""`ensign action record` (report what was done with a token) and `ensign audit trail` (a human's
or an agent's story, from consent to the resources touched, one line each)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ensign.daemon.actions import OUTCOMES, parse_detail
from ensign.daemon.errors import InvalidRequest, UsageError
from ensign.proto import actions_pb2 as pb
from ensign.proto import admin_pb2 as apb
from ensign.proto.actions_grpc import ActionsStub
from ensign.proto.admin_grpc import AdminStub

from .audit_cmds import _when
from .common import (
    DEFAULT_SOCKET,
    TIMEOUT,
    add_output,
    admin_socket,
    channel,
    print_json,
    socket_path,
)
from .token_cmds import HEADER, _read_token


def register(sub: Any) -> None:
    act = sub.add_parser("action", help="report an agent's action to the audit trail")
    asub = act.add_subparsers(dest="action_command", required=True, metavar="SUBCOMMAND",
                              parser_class=type(act))
    rec = asub.add_parser("record", help="record an action done with a token (Workload API)")
    rec.add_argument("--token", required=True, metavar="TOKEN|FILE|-",
                     help="the token the action was done with: the token, a file, or - (stdin)")
    rec.add_argument("--action", required=True, help="what was done, e.g. read")
    rec.add_argument("--resource", required=True, help="what it was done to")
    rec.add_argument("--outcome", required=True, choices=OUTCOMES)
    rec.add_argument("--detail", default="", metavar="JSON",
                     help="a JSON object (at most 4 KiB): your words, kept apart from who acted")
    rec.add_argument("--socket", help="Workload API socket (default $SPIFFE_ENDPOINT_SOCKET)")
    add_output(rec)
    rec.set_defaults(func=action_record)

    # `audit trail` joins the audit group (audit_cmds) without that module knowing of it.
    audit_group = sub.choices["audit"]
    audit_sub = next(a for a in audit_group._actions
                     if isinstance(a, argparse._SubParsersAction))
    trail = audit_sub.add_parser(
        "trail", help="consent, exchanges and actions of a human or an agent, in order")
    who = trail.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", default="", help="the human (a token's sub, a grant's subject)")
    who.add_argument("--agent", default="", metavar="ID", help="the agent that acted")
    trail.add_argument("--since", type=_when, metavar="TIME",
                       help="RFC 3339, or a duration ago (1h)")
    trail.add_argument("--admin-socket", help="admin socket (default $ENSIGN_ADMIN_SOCKET, "
                       "then the config's admin_socket_path)")
    trail.add_argument("--config", type=Path, help="config file to find the admin socket in")
    add_output(trail)
    trail.set_defaults(func=audit_trail)


async def action_record(args: argparse.Namespace) -> int:
    try:
        parse_detail(args.detail)
    except InvalidRequest as e:
        raise UsageError(f"--detail: {e}") from None
    req = pb.ActionRecord(token=_read_token(args.token), action=args.action,
                          resource=args.resource, outcome=args.outcome, detail=args.detail)
    sock = socket_path(args.socket, "SPIFFE_ENDPOINT_SOCKET", DEFAULT_SOCKET)
    async with channel(sock) as ch:
        r = await ActionsStub(ch).Record(req, metadata=HEADER, timeout=TIMEOUT)
    if args.output == "json":
        print_json({"seq": r.seq, "attribution": r.attribution, "reason": r.reason,
                    "agent_id": r.agent_id, "spiffe_id": r.spiffe_id,
                    "delegator": r.delegator})
    elif r.attribution == "issued":
        print(f"recorded seq {r.seq}: {r.spiffe_id or r.agent_id}"
              + (f" for {r.delegator}" if r.delegator else ""))
    else:
        print(f"recorded seq {r.seq}: attribution {r.attribution or 'unknown'}: {r.reason}")
    return 0


# -- the trail -------------------------------------------------------------------------------

async def audit_trail(args: argparse.Namespace) -> int:
    since = args.since or ""
    if args.subject:
        queries = [apb.AuditQuery(type="token.exchanged", delegator=args.subject, since=since),
                   apb.AuditQuery(type="action", delegator=args.subject, since=since)]
    else:
        queries = [apb.AuditQuery(type="token.exchanged", agent=args.agent, since=since),
                   apb.AuditQuery(type="action", agent=args.agent, since=since)]
    queries.append(apb.AuditQuery(type="grant.change", since=since))
    found: dict[tuple[str, int], dict[str, Any]] = {}
    async with channel(admin_socket(args)) as ch:
        for q in queries:
            async with AdminStub(ch).QueryAudit.open(timeout=60) as stream:
                await stream.send_message(q, end=True)
                async for chunk in stream:
                    for raw in chunk.records:
                        r = json.loads(raw)
                        found[(str(r.get("chain", "")), int(r.get("seq", 0)))] = r
    records = [r for _, r in sorted(found.items())
               if r.get("type") != "grant.change" or _grant_concerns(r, args.subject, args.agent)]
    steps = [s for r in records for s in trail_steps(r)]
    if args.output == "json":
        print_json(steps)
    else:
        for s in steps:
            print(f"{s['time']}  {s['seq']:>7}  {s['kind']:8}  {s['text']}")
    return 0


def _grant_concerns(r: dict[str, Any], subject: str, agent: str) -> bool:
    d = r.get("details") or {}
    for g in (d.get("after"), d.get("before")):
        if isinstance(g, dict) and ((subject and g.get("subject") == subject)
                                    or (agent and g.get("agent_id") == agent)):
            return True
    return False


def trail_steps(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One record as the trail's steps: consent (a grant, or may_act in the human's token),
    exchange, action. An exchange that rests on may_act is preceded by its consent step."""
    d = r.get("details") or {}
    kind = r.get("type")
    if kind == "grant.change":
        g = d.get("after") or d.get("before") or {}
        what = "withdrew" if d.get("action") == "grant_revoke" else "allowed"
        text = (f"{g.get('subject', '?')} {what} {g.get('agent_id', '?')} to act for them: "
                f"grant {g.get('id', r.get('subject', '?'))} [{' '.join(g.get('scopes', []))}]"
                f" (by {r.get('actor', '?')})")
        return [_step(r, "consent", text)]
    who = r.get("spiffe_id") or r.get("agent_id") or "an unknown agent"
    if kind == "token.exchanged":
        consent = d.get("consent") or {}
        chain = " <- ".join(d.get("act", [])) or who
        via = (f"grant {consent['grant']}" if consent.get("grant")
               else "may_act" if consent.get("may_act") else "")
        text = (f"{who} for {r.get('delegator') or '?'} at {','.join(r.get('audience', []))} "
                f"[{' '.join(r.get('scopes', []))}] chain {chain}"
                + (f" consent {via}" if via else "") + (f" jti {d['jti']}" if d.get("jti") else "")
                + ("" if r.get("result") == "success" else
                   f" REFUSED: {r.get('reason', '')}"))
        steps = []
        if consent.get("may_act") and not consent.get("grant") and not d.get("previous_actors"):
            steps.append(_step(r, "consent", f"{r.get('delegator', '?')} named {who} in "
                                             "may_act of their token"))
        return [*steps, _step(r, "exchange", text)]
    chain = " <- ".join(d.get("chain", [])) or who
    attribution = d.get("attribution", "unknown")
    reporter = ",".join((d.get("reporter") or {}).get("spiffe_ids", [])) or "?"
    text = (f"{d.get('action', '?')} {d.get('resource', '?')} {r.get('result', '?')} "
            f"by {chain} for {r.get('delegator') or '-'}"
            + (f" grant {d['grant']}" if d.get("grant") else
               f" consent {d['consent']}" if d.get("consent") else "")
            + f" (reported by {reporter})"
            + ("" if attribution == "issued" else f" ATTRIBUTION {attribution}: "
                                                   f"{r.get('reason', '')}"))
    return [_step(r, "action", text)]


def _step(r: dict[str, Any], kind: str, text: str) -> dict[str, Any]:
    return {"time": str(r.get("time", "")).replace("+00:00", "Z"), "seq": r.get("seq", 0),
            "kind": kind, "text": text, "record": r}
