"""Workload API client commands, like `spire-agent api`: fetch, validate, watch, healthcheck."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)
from google.protobuf.json_format import MessageToDict
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from ensign.daemon.api.health import NOTICE_KEY, REASON_KEY
from ensign.daemon.issuing import load_der_chain
from ensign.proto import workload_pb2 as pb
from ensign.proto.workload_grpc import SpiffeWorkloadAPIStub

from .common import (
    add_output,
    add_workload_flags,
    fmt_time,
    plain_numbers,
    print_json,
    workload_channel,
    workload_socket,
)
from .helper_files import CertDir

HEADER = {"workload.spiffe.io": "true"}


def register(sub: Any) -> None:
    def with_socket(p: argparse.ArgumentParser, timeout: bool = True) -> argparse.ArgumentParser:
        add_workload_flags(p, timeout=timeout)
        add_output(p)
        return p

    fetch = sub.add_parser("fetch", help="fetch SVIDs or bundles from the Workload API")
    fsub = fetch.add_subparsers(dest="fetch_command", required=True, metavar="WHAT",
                                parser_class=type(fetch))
    x = with_socket(fsub.add_parser("x509", help="fetch X.509-SVIDs"))
    x.add_argument("--write", type=Path, metavar="DIR",
                   help="write svid.N.pem, svid.N.key (0600) and bundle.N.pem to DIR")
    x.set_defaults(func=fetch_x509)
    j = with_socket(fsub.add_parser("jwt", help="fetch JWT-SVIDs"))
    j.add_argument("--audience", action="append", required=True, help="audience (repeatable)")
    j.add_argument("--spiffe-id", help="only this identity")
    j.set_defaults(func=fetch_jwt)
    b = with_socket(fsub.add_parser("bundles", help="fetch X.509 and JWT bundles"))
    b.set_defaults(func=fetch_bundles)

    validate = sub.add_parser("validate", help="validate a token with the Workload API")
    vsub = validate.add_subparsers(dest="validate_command", required=True, metavar="WHAT",
                                   parser_class=type(validate))
    v = with_socket(vsub.add_parser("jwt", help="validate a JWT-SVID"))
    v.add_argument("--audience", required=True)
    v.add_argument("--token", required=True, help="the JWT-SVID, or - to read it from stdin")
    v.set_defaults(func=validate_jwt)

    # No --timeout: watch runs until interrupted (or until the daemon ends the stream).
    w = with_socket(sub.add_parser("watch", help="print each X.509-SVID update as it arrives "
                                                 "(until interrupted)"), timeout=False)
    w.set_defaults(func=watch)

    h = with_socket(sub.add_parser("healthcheck", help="check the daemon is serving"))
    h.add_argument("--verbose", action="store_true", help="also print the socket and the reason")
    h.set_defaults(func=healthcheck)


def _describe(resp: pb.X509SVIDResponse) -> list[dict[str, Any]]:
    out = []
    for s in resp.svids:
        leaf = load_der_chain(s.x509_svid)[0]
        out.append({
            "spiffe_id": s.spiffe_id,
            "serial": format(leaf.serial_number, "x"),
            "not_before": fmt_time(leaf.not_valid_before_utc.timestamp()),
            "not_after": fmt_time(leaf.not_valid_after_utc.timestamp()),
            "hint": s.hint,
        })
    return out


async def fetch_x509(args: argparse.Namespace) -> int:
    out = _open_out_dir(args.write) if args.write else None  # refused before a key is asked
    try:
        async with workload_channel(args) as ch:
            stub = SpiffeWorkloadAPIStub(ch)
            async with stub.FetchX509SVID.open(metadata=HEADER, timeout=args.timeout) as stream:
                await stream.send_message(pb.X509SVIDRequest(), end=True)
                resp = await stream.recv_message()
                await stream.cancel()
        assert resp is not None
        if out is not None:
            _write_svids(resp, out)
    finally:
        if out is not None:
            out.close()
    if args.output == "json":
        print_json(_describe(resp))
    else:
        for d in _describe(resp):
            print(f"{d['spiffe_id']}  serial {d['serial']}  valid until {d['not_after']}")
        if args.write:
            print(f"wrote {len(resp.svids)} SVID(s) to {args.write}")
    return 0


def _open_out_dir(out: Path) -> CertDir:
    """`--write DIR`, made 0700 if missing and opened once (CertDir.open: refused, exit 77, if
    another user could place or swap files in it)."""
    with contextlib.suppress(FileExistsError):
        out.mkdir(mode=0o700, parents=True)
    return CertDir.open(out)


def _write_svids(resp: pb.X509SVIDResponse, out: CertDir) -> None:
    """Each file a new one renamed over the old name (CertDir.write): a file another user
    left under that name is replaced, never written into."""
    for i, s in enumerate(resp.svids):
        certs = load_der_chain(s.x509_svid)
        key = load_der_private_key(s.x509_svid_key, password=None)
        bundle = load_der_chain(s.bundle)
        out.write(f"svid.{i}.key",
                  key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), 0o600)
        out.write(f"svid.{i}.pem", b"".join(c.public_bytes(Encoding.PEM) for c in certs), 0o644)
        out.write(f"bundle.{i}.pem", b"".join(c.public_bytes(Encoding.PEM) for c in bundle),
                  0o644)
    out.sync()


async def fetch_jwt(args: argparse.Namespace) -> int:
    audience = [a for item in args.audience for a in item.split(",")]
    async with workload_channel(args) as ch:
        resp = await SpiffeWorkloadAPIStub(ch).FetchJWTSVID(
            pb.JWTSVIDRequest(audience=audience, spiffe_id=args.spiffe_id or ""),
            metadata=HEADER, timeout=args.timeout,
        )
    if args.output == "json":
        print_json([{"spiffe_id": s.spiffe_id, "token": s.svid, "hint": s.hint}
                    for s in resp.svids])
    elif len(resp.svids) == 1:
        print(resp.svids[0].svid)
    else:
        for s in resp.svids:
            print(f"# {s.spiffe_id}\n{s.svid}")
    return 0


async def fetch_bundles(args: argparse.Namespace) -> int:
    async with workload_channel(args) as ch:
        stub = SpiffeWorkloadAPIStub(ch)
        async with stub.FetchX509Bundles.open(metadata=HEADER, timeout=args.timeout) as s1:
            await s1.send_message(pb.X509BundlesRequest(), end=True)
            x509_resp = await s1.recv_message()
            await s1.cancel()
        async with stub.FetchJWTBundles.open(metadata=HEADER, timeout=args.timeout) as s2:
            await s2.send_message(pb.JWTBundlesRequest(), end=True)
            jwt_resp = await s2.recv_message()
            await s2.cancel()
    assert x509_resp is not None and jwt_resp is not None
    doc: dict[str, Any] = {}
    for td, der in x509_resp.bundles.items():
        pems = [c.public_bytes(Encoding.PEM).decode() for c in load_der_chain(der)]
        doc.setdefault(td, {})["x509_authorities"] = pems
    for td, jwks in jwt_resp.bundles.items():
        doc.setdefault(td, {})["jwt_authorities"] = json.loads(jwks)
    if args.output == "json":
        print_json(doc)
    else:
        for td, d in doc.items():
            print(f"# {td}: {len(d.get('x509_authorities', []))} X.509 authorities")
            sys.stdout.write("".join(d.get("x509_authorities", [])))
            print(f"# {td}: JWT authorities")
            print(json.dumps(d.get("jwt_authorities", {}), indent=2))
    return 0


async def validate_jwt(args: argparse.Namespace) -> int:
    token = sys.stdin.read().strip() if args.token == "-" else args.token
    async with workload_channel(args) as ch:
        resp = await SpiffeWorkloadAPIStub(ch).ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience=args.audience, svid=token),
            metadata=HEADER, timeout=args.timeout,
        )
    claims = plain_numbers(MessageToDict(resp.claims))
    if args.output == "json":
        print_json({"spiffe_id": resp.spiffe_id, "claims": claims})
    else:
        print(f"valid: {resp.spiffe_id}")
        exp = claims.get("exp")
        if isinstance(exp, int):
            print(f"expires {fmt_time(exp)}")
    return 0


async def watch(args: argparse.Namespace) -> int:
    async with workload_channel(args) as ch:
        stub = SpiffeWorkloadAPIStub(ch)
        async with stub.FetchX509SVID.open(metadata=HEADER) as stream:
            await stream.send_message(pb.X509SVIDRequest(), end=True)
            async for resp in stream:
                for d in _describe(resp):
                    if args.output == "json":
                        print(json.dumps(d, sort_keys=True), flush=True)
                    else:
                        print(f"{d['spiffe_id']}  serial {d['serial']}  "
                              f"valid until {d['not_after']}", flush=True)
    return 0


async def healthcheck(args: argparse.Namespace) -> int:
    async with (
        workload_channel(args) as ch,
        HealthStub(ch).Check.open(timeout=args.timeout) as stream,
    ):
        await stream.send_message(HealthCheckRequest(), end=True)
        resp = await stream.recv_message()
        await stream.recv_trailing_metadata()
        trailers = dict(stream.trailing_metadata or {})
        raw, raw_notice = trailers.get(REASON_KEY, ""), trailers.get(NOTICE_KEY, "")
        reason = raw.decode() if isinstance(raw, bytes) else raw
        notice = raw_notice.decode() if isinstance(raw_notice, bytes) else raw_notice
    assert resp is not None
    serving = resp.status == HealthCheckResponse.SERVING
    name = HealthCheckResponse.ServingStatus.Name(resp.status)
    if args.output == "json":
        print_json({"status": name, "reason": reason, "notice": notice})
    else:
        print(("healthy" + (f" (degraded: {notice})" if notice else "")) if serving
              else f"unhealthy: {name}" + (f" ({reason})" if reason else ""))
        if args.verbose:
            print(f"socket: {workload_socket(args)}\nstatus: {name}\nreason: {reason or '-'}")
    return 0 if serving else 1
