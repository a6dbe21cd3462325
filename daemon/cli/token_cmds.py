"""`ensign token exchange|verify|inspect` and `ensign delegation grant|revoke|list`."""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ensign.daemon.errors import InvalidData, TokenInvalid
from ensign.proto import admin_pb2 as apb
from ensign.proto import delegation_pb2 as dpb
from ensign.proto.delegation_grpc import DelegationStub

from .common import (
    TIMEOUT,
    add_output,
    add_workload_flags,
    admin_call,
    duration_seconds,
    fmt_time,
    json_time,
    message_json,
    print_json,
    print_table,
    read_input,
    workload_channel,
)

Common = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
HEADER = {"workload.spiffe.io": "true"}


def register(sub: Any, common: Common) -> None:
    tok = sub.add_parser("token", help="delegated tokens: exchange, verify, inspect")
    tsub = tok.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND",
                              parser_class=type(tok))
    ex = tsub.add_parser("exchange", help="exchange a delegator's token for a delegated one")
    ex.add_argument("--subject-token", required=True, metavar="FILE|-")
    ex.add_argument("--audience", required=True)
    ex.add_argument("--scope", action="append", default=[])
    ex.add_argument("--ttl", type=duration_seconds, default=0, metavar="DURATION")
    ex.add_argument("--allow-narrowing", action="store_true",
                    help="grant what is allowed instead of refusing a wider request")
    add_workload_flags(ex)
    add_output(ex)
    ex.set_defaults(func=token_exchange)
    ver = tsub.add_parser("verify", help="verify a delegated token offline (resource servers)")
    ver.add_argument("token", help="the token, or - for stdin")
    ver.add_argument("--audience", required=True)
    ver.add_argument("--bundle", type=Path,
                     help="JWKS file of the delegated-token keys (default: from the daemon)")
    ver.add_argument("--issuer", help="expected iss")
    ver.add_argument("--cert", type=Path, metavar="PEM",
                     help="the certificate the token was presented with: check its cnf binding")
    add_workload_flags(ver)
    add_output(ver)
    ver.set_defaults(func=token_verify)
    ins = tsub.add_parser("inspect", help="decode a token without verifying it")
    ins.add_argument("token", help="the token, or - for stdin")
    ins.set_defaults(func=token_inspect)

    dlg = sub.add_parser("delegation", help="standing human-to-agent grants (admin socket)")
    dsub = dlg.add_subparsers(dest="delegation_command", required=True, metavar="SUBCOMMAND",
                              parser_class=type(dlg))
    g = common(dsub.add_parser("grant", help="let an agent act for a human within scopes"))
    g.add_argument("--subject", required=True, help="the human (the IdP token's sub)")
    g.add_argument("--issuer", required=True, help="the IdP (iss)")
    g.add_argument("--agent", required=True, metavar="ID")
    g.add_argument("--scope", action="append", required=True)
    g.add_argument("--ttl", type=duration_seconds, default=0, metavar="DURATION")
    g.set_defaults(func=grant_create)
    r = common(dsub.add_parser("revoke", help="revoke a grant; exchanges stop at once"))
    r.add_argument("grant", metavar="GRANT")
    r.add_argument("--reason", default="")
    r.set_defaults(func=grant_revoke)
    ls = common(dsub.add_parser("list", help="list grants"))
    ls.add_argument("--agent", default="")
    ls.add_argument("--subject", default="")
    ls.add_argument("--all", action="store_true", help="include revoked and expired grants")
    ls.set_defaults(func=grant_list)


def _read_token(value: str) -> str:
    if value == "-":
        return sys.stdin.read().strip()
    if value.count(".") == 2 and "/" not in value:
        return value.strip()  # a compact JWT, not a file name
    try:
        return read_input(Path(value), "token file").decode().strip()
    except UnicodeDecodeError:
        raise InvalidData(f"{value}: not a token (not UTF-8 text)") from None


async def token_exchange(args: argparse.Namespace) -> int:
    req = dpb.ExchangeTokenRequest(
        subject_token=_read_token(args.subject_token),
        subject_token_type="urn:ietf:params:oauth:token-type:jwt", audience=args.audience,
        scopes=args.scope, requested_ttl_seconds=args.ttl, allow_narrowing=args.allow_narrowing)
    async with workload_channel(args) as ch:
        resp = await DelegationStub(ch).ExchangeToken(req, metadata=HEADER, timeout=args.timeout)
    if args.output == "json":
        print_json(message_json(resp))
    else:
        print(resp.access_token)
    return 0


async def _jwks(args: argparse.Namespace) -> dict[str, Any]:
    from ensign.daemon.delegation.idp import parse_jwks  # PyJWT: for the commands using it

    if args.bundle:
        data = read_input(args.bundle, "JWKS")
        try:
            return parse_jwks(data)
        except ValueError as e:
            raise InvalidData(f"{args.bundle}: not a JWKS: {e}") from None
    # The delegated-token keys: never the JWT bundle, whose keys sign JWT-SVIDs only.
    async with workload_channel(args) as ch:
        resp = await DelegationStub(ch).TokenKeys(dpb.TokenKeysRequest(), metadata=HEADER,
                                                  timeout=args.timeout)
    return parse_jwks(resp.jwks)


def _presenter(path: Path | None) -> bytes | None:
    if path is None:
        return None
    data = read_input(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    except ValueError as e:
        raise InvalidData(f"{path}: not a PEM certificate: {e}") from None


async def token_verify(args: argparse.Namespace) -> int:
    from ensign.daemon.delegation.tokens import verify_delegated

    token = _read_token(args.token)
    keys = await _jwks(args)
    t = verify_delegated(token, args.audience, keys, now=datetime.now(UTC), issuer=args.issuer,
                         presenter_cert=_presenter(args.cert))
    if args.output == "json":
        print_json({"valid": True, "subject": t.subject, "actors": list(t.actors),
                    "scopes": list(t.scopes), "audience": list(t.audience),
                    "expires_at": json_time(t.expires_at), "claims": t.claims})
    else:
        print(f"valid: {t.subject} via {' <- '.join(t.actors)}; scope {' '.join(t.scopes)}; "
              f"expires {fmt_time(t.expires_at)}")
    return 0


def token_inspect(args: argparse.Namespace) -> int:
    import jwt

    token = _read_token(args.token)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise TokenInvalid(f"not a JWT: {e}") from None
    print_json({"header": header, "claims": claims,
                "signature_bytes": len(base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "=="))})
    return 0


def grant_json(g: apb.Grant) -> dict[str, Any]:
    # ttl_seconds is an input of CreateGrant only; the grant's end is expires_at.
    return message_json(g, drop=("ttl_seconds",))


async def grant_create(args: argparse.Namespace) -> int:
    req = apb.Grant(subject=args.subject, issuer=args.issuer, agent_id=args.agent,
                    scopes=args.scope, ttl_seconds=args.ttl)
    grant = await admin_call(args, lambda s: s.CreateGrant(req, timeout=TIMEOUT))
    print_json(grant_json(grant)) if args.output == "json" else print(grant.id)
    return 0


async def grant_revoke(args: argparse.Namespace) -> int:
    grant = await admin_call(args, lambda s: s.RevokeGrant(
        apb.RevokeGrantRequest(id=args.grant, reason=args.reason), timeout=TIMEOUT))
    print_json(grant_json(grant)) if args.output == "json" else print(f"revoked {grant.id}")
    return 0


async def grant_list(args: argparse.Namespace) -> int:
    req = apb.ListGrantsRequest(agent_id=args.agent, subject=args.subject,
                                include_revoked=args.all)
    resp = await admin_call(args, lambda s: s.ListGrants(req, timeout=TIMEOUT))
    if args.output == "json":
        print_json([grant_json(g) for g in resp.grants])
        return 0

    def state(g: apb.Grant) -> str:
        return f"revoked {fmt_time(g.revoked_at)}" if g.revoked_at else "active"

    print_table(("ID", "SUBJECT", "AGENT", "SCOPES", "EXPIRES", "STATE"),
                [(g.id, g.subject, g.agent_id, " ".join(g.scopes),
                  fmt_time(g.expires_at) if g.expires_at else "never", state(g))
                 for g in resp.grants])
    return 0
