"""`ensign tpm status|quote|policy|challenge|verify-evidence`: TPM evidence for remote verifiers.

`status`, `quote` and `policy` ask the daemon (Attestation service on the Workload API socket).
`challenge` and `verify-evidence` run anywhere, without a TPM or a daemon: a verifier's tools.

Verifying a node from scratch, anchored in the TPM manufacturer's CA:

    node$     ensign tpm quote --nonce $(openssl rand -hex 32) --out first.json
    verifier$ ensign tpm challenge first.json --ek-ca mfr.pem --out chal.json \\
                  --secret-out chal.key
    node$     ensign tpm quote --nonce N --challenge chal.json --out ev.json
    verifier$ ensign tpm verify-evidence ev.json --nonce N --ek-ca mfr.pem \\
                  --challenge-secret chal.key --policy golden.json --ak-pub-out node-ak.pem

After that enrolment, `--ak-pub node-ak.pem` verifies later evidence without a challenge.
Documents (evidence, challenges, policies) go to stdout, or to `--out FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from ensign.daemon.errors import ConfigError, InvalidData, UsageError
from ensign.daemon.files import write_private
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.ekcert import load_certificates
from ensign.daemon.tpm.errors import TpmUnavailable
from ensign.daemon.tpm.evidence import Evidence, Verdict, spki, verify_evidence
from ensign.daemon.tpm.policy import PcrPolicy
from ensign.proto import attestation_pb2 as pb
from ensign.proto.attestation_grpc import AttestationStub

from .common import (
    add_output,
    add_workload_flags,
    message_json,
    print_fields,
    print_json,
    read_input,
    workload_channel,
)

HEADER = {"workload.spiffe.io": "true"}


def register(sub: Any) -> None:
    tpm = sub.add_parser("tpm", help="TPM evidence about this node, and its verification")
    tsub = tpm.add_subparsers(dest="tpm_command", required=True, metavar="SUBCOMMAND",
                              parser_class=type(tpm))

    def daemon_side(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_workload_flags(p)
        return p

    def out(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--out", type=Path, metavar="FILE",
                       help=f"write the {what} to FILE (default: print it)")

    st = daemon_side(tsub.add_parser("status", help="connection, keys, handles, PCRs, last quote"))
    add_output(st)
    st.add_argument("--ak-pub-out", type=Path, metavar="FILE",
                    help="also write the AK public key (PEM), unverified: trust on first use")
    st.set_defaults(func=tpm_status)

    q = daemon_side(tsub.add_parser("quote", help="fresh evidence for a verifier's nonce"))
    q.add_argument("--nonce", type=_hex, required=True, help="the verifier's nonce (hex)")
    out(q, "evidence (JSON)")
    q.add_argument("--challenge", type=Path, metavar="FILE",
                   help="a credential challenge from `ensign tpm challenge`")
    q.set_defaults(func=tpm_quote)

    pol = daemon_side(tsub.add_parser("policy", help="write the node's current PCR values as "
                                                     "a golden-value policy"))
    out(pol, "policy (JSON)")
    pol.set_defaults(func=tpm_policy)

    ch = tsub.add_parser("challenge", help="make a credential challenge for a node's EK and AK")
    ch.add_argument("evidence", type=Path, help="earlier evidence from the node")
    ch.add_argument("--ek-ca", type=Path, action="append", required=True, metavar="FILE",
                    help="manufacturer CA certificate(s) the EK must chain to (repeatable)")
    out(ch, "challenge (JSON)")
    ch.add_argument("--secret-out", type=Path, required=True, metavar="FILE",
                    help="where to keep the secret (0600); never send it to the node")
    ch.set_defaults(func=tpm_challenge)

    ve = tsub.add_parser("verify-evidence", help="verify evidence offline (no TPM needed)")
    ve.add_argument("file", type=Path)
    ve.add_argument("--nonce", type=_hex, required=True)
    ve.add_argument("--ak-pub", type=Path, metavar="FILE",
                    help="the node's enrolled AK (PEM public key or TPMT_PUBLIC)")
    ve.add_argument("--ek-ca", type=Path, action="append", metavar="FILE",
                    help="manufacturer CA certificate(s); needs --challenge-secret")
    ve.add_argument("--challenge-secret", type=Path, metavar="FILE")
    ve.add_argument("--policy", type=Path, required=True, metavar="FILE",
                    help="golden PCR values (JSON)")
    ve.add_argument("--ak-pub-out", type=Path, metavar="FILE",
                    help="after success, write the verified AK (PEM) for --ak-pub")
    add_output(ve)
    ve.set_defaults(func=tpm_verify)


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None


def _read(path: Path) -> bytes:
    return read_input(path)


def _policy(path: Path) -> PcrPolicy:
    data = read_input(path, "PCR policy")
    try:
        return PcrPolicy.parse(json.loads(data), str(path))
    except ValueError as e:
        raise InvalidData(f"{path}: PCR policy is not valid JSON: {e}") from None
    except ConfigError as e:
        raise InvalidData(str(e)) from None


def _certificates(paths: list[Path]) -> list[Any]:
    for path in paths:
        read_input(path, "certificate file")  # missing: 66; unparsable: 65 below
    try:
        return load_certificates(paths)
    except ConfigError as e:
        raise InvalidData(str(e)) from None


def _emit(args: argparse.Namespace, document: bytes, summary: str) -> None:
    """A document to `--out FILE` (and a summary line), or to stdout."""
    if args.out is None:
        text = document.decode()  # JSON documents: UTF-8
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    args.out.write_bytes(document)
    print(f"wrote {args.out}: {summary}")


# -- daemon side ---------------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> pb.TpmStatus:
    async with workload_channel(args) as ch:
        status: pb.TpmStatus = await AttestationStub(ch).GetStatus(
            pb.GetStatusRequest(), metadata=HEADER, timeout=args.timeout)
        return status


async def tpm_status(args: argparse.Namespace) -> int:
    s = await _status(args)
    if args.ak_pub_out and s.available:
        ev = await _evidence(args, os.urandom(32), None)
        args.ak_pub_out.write_bytes(_pem(ev.ak_public))
    if args.output == "json":
        print_json(message_json(s))
        return 0 if s.available else 69

    def handles(values: Any) -> str:
        return " ".join(values) or "none"  # the daemon writes them in hex

    rows: list[tuple[str, object]] = [
        ("available", "yes" if s.available else f"no: {s.problem}"), ("tcti", s.tcti)]
    if s.emulator_pid:
        rows.append(("emulator pid", str(s.emulator_pid)))
    rows += [("EK", f"{s.ek_kind} sha256:{s.ek_sha256}"), ("EK certificate", s.ek_check),
             ("AK name", s.ak_name),
             ("transient handles", handles(s.transient_handles)),
             ("persistent handles", handles(s.persistent_handles)),
             ("session handles", handles(s.session_handles)),
             ("flushed at connect", ", ".join(s.flushed_at_connect) or "none"),
             ("last quote", f"{s.last_quote_at or '-'} (reset {s.reset_count}, restart "
                            f"{s.restart_count}, verified)" if s.last_quote_at else "-"),
             ("policy", s.policy + "".join(f"\n    {m}" for m in s.policy_mismatches)),
             ("measured", f"{s.measurements} executables in PCR {s.measure_pcr} "
                          f"(epoch: {s.epoch_reason or '-'})")]
    if s.problem and s.available:
        rows.append(("problem", s.problem))
    print_fields(rows)
    for i in sorted(s.pcrs):
        print(f"  PCR {i:>2}  {s.pcrs[i]}")
    return 0 if s.available else 69


async def _evidence(args: argparse.Namespace, nonce: bytes,
                    challenge: pb.CredentialChallenge | None) -> Evidence:
    from ensign.daemon.api.attestation import evidence_from_pb  # the api layer: this one call

    async with workload_channel(args) as ch:
        msg = await AttestationStub(ch).GetEvidence(
            pb.GetEvidenceRequest(nonce=nonce, challenge=challenge), metadata=HEADER,
            timeout=args.timeout)
    return evidence_from_pb(msg)


async def tpm_quote(args: argparse.Namespace) -> int:
    challenge = None
    if args.challenge:
        from ensign.daemon.tpm.challenge import (
            Challenge,  # loads tpm2-tss: only where a challenge is used
        )

        c = Challenge.from_json(_read(args.challenge))
        challenge = pb.CredentialChallenge(credential_blob=c.credential_blob,
                                           encrypted_secret=c.encrypted_secret)
    ev = await _evidence(args, args.nonce, challenge)
    n = len(ev.log.entries) if ev.log else 0
    _emit(args, ev.to_json(), f"quote over PCRs {sorted(ev.pcrs)}, {n} measured executables"
          + (", with activation proof" if ev.activation_proof else ""))
    return 0


async def tpm_policy(args: argparse.Namespace) -> int:
    s = await _status(args)
    if not s.available:
        raise TpmUnavailable(f"TPM unavailable: {s.problem}")
    values = {i: bytes.fromhex(v) for i, v in s.pcrs.items() if i != s.measure_pcr}
    _emit(args, (json.dumps(PcrPolicy.document(values), indent=1) + "\n").encode(),
          f"golden values of PCRs {sorted(values)} (review before use)")
    return 0


# -- verifier side -------------------------------------------------------------------------


def tpm_challenge(args: argparse.Namespace) -> int:
    from ensign.daemon.tpm.challenge import (
        make_challenge,  # loads tpm2-tss; verify-evidence never does
    )

    ev = Evidence.from_json(_read(args.evidence))
    challenge, secret = make_challenge(ev, _certificates(args.ek_ca))
    write_private(args.secret_out.resolve(), secret.hex().encode() + b"\n")
    _emit(args, challenge.to_json(), f"challenge for EK sha256:{challenge.ek_sha256} and AK "
          f"{challenge.ak_name.hex()}; secret in {args.secret_out} (keep it here)")
    return 0


def _trusted_ak(path: Path) -> bytes:
    data = _read(path)
    if b"-----BEGIN" in data:
        try:
            return spki(load_pem_public_key(data))
        except ValueError as e:
            raise InvalidData(f"{path}: not a PEM public key: {e}") from None
    return spki(ts.parse_public(data).key)


def _pem(tpmt_public: bytes) -> bytes:
    key = ts.parse_public(tpmt_public).key
    pem: bytes = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return pem


def tpm_verify(args: argparse.Namespace) -> int:
    if args.ak_pub is None and not args.ek_ca:
        raise UsageError("give --ak-pub (an enrolled AK) or --ek-ca (manufacturer CAs)")
    if args.challenge_secret and not args.ek_ca:
        raise UsageError("--challenge-secret goes with --ek-ca")
    secret = None
    if args.challenge_secret:
        try:
            secret = bytes.fromhex(_read(args.challenge_secret).decode().strip())
        except (ValueError, UnicodeDecodeError):
            raise InvalidData(f"{args.challenge_secret}: not a hex secret") from None
    ev = Evidence.from_json(_read(args.file))
    verdict = verify_evidence(
        ev, args.nonce, policy=_policy(args.policy),
        trusted_ak=_trusted_ak(args.ak_pub) if args.ak_pub else None,
        ek_anchors=_certificates(args.ek_ca) if args.ek_ca else None,
        challenge_secret=secret)
    if args.ak_pub_out:
        args.ak_pub_out.write_bytes(_pem(ev.ak_public))
    _report(args, ev, verdict)
    return 0


def _report(args: argparse.Namespace, ev: Evidence, v: Verdict) -> None:
    measured = [{"sha256": m.sha256, "path": m.path, "at": m.at} for m in v.measured]
    if args.output == "json":
        print_json({"ok": True, "trusted_by": v.trusted_by, "ak_name": v.ak_name,
                    "ek_sha256": v.ek_sha256, "ek_chain": list(v.ek_chain),
                    "pcrs": {str(i): ev.pcrs[i].hex() for i in sorted(ev.pcrs)},
                    "policy_pcrs": list(v.policy_pcrs), "reset_count": v.quote.reset_count,
                    "restart_count": v.quote.restart_count, "measure_pcr": ev.measure_pcr,
                    "measured": measured})
        return
    print(f"evidence OK: quote by AK {v.ak_name} ({v.trusted_by}); nonce and PCR digest match")
    if v.ek_chain:
        print(f"EK sha256:{v.ek_sha256}: " + " <- ".join(v.ek_chain))
    print(f"policy: PCRs {', '.join(map(str, v.policy_pcrs))} hold golden values ({args.policy})")
    print(f"boot: reset count {v.quote.reset_count}, restart count {v.quote.restart_count}")
    print(f"measured executables (PCR {ev.measure_pcr}, replayed): {len(measured)}")
    for m in measured:
        print(f"  {m['sha256']}  {m['path']}  {m['at']}")
    sys.stdout.flush()
