"""Token exchanges per second over HTTPS (httpx, mTLS with the agent's SVID) beside the same
exchange over the Unix socket (grpcio, ExchangeToken), in the same run against one daemon, and
introspection requests per second over HTTPS.

Rounds alternate between the transports so a noisy machine hits both alike. The figure's ratio is
median(HTTPS) / median(Unix socket): what the network path (TLS, HTTP/1.1, form parsing, JSON)
costs on top of the one exchange both share. Introspection is reported on its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _servers
from ._clients import ClientPool, Task
from ._stats import ratio, summarize

NAME = "token_exchange_https_vs_unix"
INTROSPECT = "introspection_https"
CLIENTS = 4
METHOD = "/ensign.delegation.v1.Delegation/ExchangeToken"
METADATA = (("workload.spiffe.io", "true"),)
IDP = "https://idp.bench"
AUD = "https://rs.bench/api"


def _idp_and_web_ca(tmp: Path) -> tuple[Any, Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem_key(k: Any) -> bytes:
        return bytes(k.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))

    import jwt

    idp = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp.public_key()))
    (tmp / "idp.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k", "use": "sig"}]}))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ensign")]))
            .issuer_name(name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "web.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp / "web.key").write_bytes(pem_key(key))
    return idp, tmp / "ca.pem", tmp / "web.pem", tmp / "web.key"


def _subject(idp: Any, agent_spiffe_id: str) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"iss": IDP, "sub": "alice", "aud": "ensign", "iat": now,
                       "exp": now + 3600, "scope": "read",
                       "may_act": {"sub": agent_spiffe_id}}, idp, algorithm="ES256",
                      headers={"kid": "k"})


def _https_client(kind: str, base: str, files: tuple[str, str, str], form: dict[str, str],
                  warmup: float, duration: float, out: Any) -> None:
    import ssl

    import httpx

    ctx = ssl.create_default_context(cafile=files[2])
    ctx.load_cert_chain(files[0], files[1])
    calls = errors = 0
    with httpx.Client(base_url=base, verify=ctx, timeout=10) as c:
        end_warm = time.monotonic() + warmup
        while time.monotonic() < end_warm:
            c.post(f"/{kind}", data=form)
        start = time.monotonic()
        while time.monotonic() - start < duration:
            r = c.post(f"/{kind}", data=form)
            if r.status_code == 200 and (kind != "introspect" or r.json().get("active")):
                calls += 1
            else:
                errors += 1
        out.put((calls / (time.monotonic() - start), errors))


def _https_round(kind: str, base: str, files: tuple[str, str, str], form: dict[str, str],
                 warmup: float, duration: float) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_https_client, args=(kind, base, files, form, warmup, duration,
                                                     out)) for _ in range(CLIENTS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(tmp: Path, *args: str) -> str:
    env = {**os.environ, "ENSIGN_ADMIN_SOCKET": f"unix://{tmp}/admin.sock",
           "SPIFFE_ENDPOINT_SOCKET": f"unix://{tmp}/agent.sock"}
    done = subprocess.run([sys.executable, "-m", "ensign.daemon", *args], capture_output=True,
                          text=True, env=env, check=True)
    return done.stdout


def run(quick: bool) -> dict[str, dict[str, Any]]:
    from ensign.proto import delegation_pb2 as dpb

    reps, warmup, duration = (2, 1.0, 2.0) if quick else (5, 1.0, 5.0)
    tmp = Path(tempfile.mkdtemp(prefix="ensign-bench-", dir="/tmp"))
    runs: dict[str, list[float]] = {"https": [], "unix": [], "introspect": []}
    errors = {"https": 0, "unix": 0, "introspect": 0}
    try:
        idp, ca, cert, key = _idp_and_web_ca(tmp)
        port = _free_port()
        extra = (f'[http]\nlisten = "127.0.0.1:{port}"\nissuer = "https://127.0.0.1:{port}"\n'
                 f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
                 f'[delegation]\nenabled = true\ntoken_ttl = "1h"\n'
                 f'[[delegation.issuers]]\nissuer = "{IDP}"\njwks_file = "{tmp / "idp.json"}"\n')
        with _servers.daemon(tmp, extra_config=extra) as daemon, ClientPool(CLIENTS) as pool:
            _cli(tmp, "role", "create", "bench-dlg", "--audience", AUD, "--scope", "read",
                 "--may-act-for-users", "--may-introspect")
            agent = json.loads(_cli(tmp, "agent", "list", "-o", "json"))[0]
            _cli(tmp, "agent", "update", agent["id"], "--role", "bench-client", "--role",
                 "bench-dlg")
            _cli(tmp, "fetch", "x509", "--write", str(tmp / "svid"))
            files = (str(tmp / "svid" / "svid.0.pem"), str(tmp / "svid" / "svid.0.key"),
                     str(ca))
            subject = _subject(idp, agent["spiffe_id"])
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "subject_token": subject, "audience": AUD, "scope": "read",
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
            base = f"https://127.0.0.1:{port}"
            request = dpb.ExchangeTokenRequest(
                subject_token=subject, subject_token_type=form["subject_token_type"],
                audience=AUD, scopes=["read"]).SerializeToString()
            token = _cli(tmp, "token", "exchange", "--subject-token", subject, "--audience",
                         AUD, "--scope", "read").strip()
            for rep in range(reps):
                r = pool.run(Task(str(daemon.socket), METHOD, request, METADATA, warmup,
                                  duration))
                runs["unix"].append(r.rate)
                errors["unix"] += r.errors
                rate, errs = _https_round("token", base, files, form, warmup, duration)
                runs["https"].append(rate)
                errors["https"] += errs
                rate, errs = _https_round("introspect", base, files, {"token": token},
                                          warmup, duration)
                runs["introspect"].append(rate)
                errors["introspect"] += errs
                print(f"  {NAME} round {rep + 1}/{reps}: unix {runs['unix'][-1]:.0f}/s, "
                      f"https {runs['https'][-1]:.0f}/s, introspect "
                      f"{runs['introspect'][-1]:.0f}/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    https, unix, intro = (summarize(runs[k]) for k in ("https", "unix", "introspect"))
    value = ratio(https["median"], unix["median"])
    setup = {"clients": CLIENTS, "reps": reps, "warmup_s": warmup, "duration_s": duration,
             "cpus": os.cpu_count()}
    return {
        NAME: {"unit": "exchanges/s", "ensign": {**https, "errors": errors["https"]},
               "baseline": {**unix, "errors": errors["unix"]}, "ratio": value,
               "target": "report", "met": True, "setup": setup,
               "note": f"HTTPS (httpx, mTLS, {CLIENTS} processes) vs the Unix socket (grpcio "
                       f"ExchangeToken): {https['median']:.0f} vs {unix['median']:.0f}/s"},
        INTROSPECT: {"unit": "requests/s", "ensign": {**intro, "errors": errors["introspect"]},
                     "baseline": {**unix, "errors": errors["unix"]},
                     "ratio": ratio(intro["median"], unix["median"]), "target": "report",
                     "met": True, "setup": setup,
                     "note": f"RFC 7662 introspection over HTTPS: {intro['median']:.0f}/s "
                             "(baseline column: Unix-socket exchanges, for scale)"},
    }
