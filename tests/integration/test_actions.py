"""Agent actions in the audit trail, end to end: Alice consents, agent A exchanges, A calls the
example document service (FastAPI with ensign.sdk's middleware, served by uvicorn over HTTP and
by anycorn over mutual TLS with A's SVID), and `ensign audit trail` tells the story from the
consent to each document touched, attributed by Ensign whatever the reporter claims."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.proto import actions_pb2 as apb
from tests.support.clients import fetch_jwt
from tests.support.daemon import ENSIGN, Daemon, make_daemon
from tests.support.https import WebCa, free_port, http_config, svid_files
from tests.support.idp import IDP, Idp, exchange
from tests.support.ocsf import problems as ocsf_problems
from tests.support.resource_server import (
    DOCS,
    docs_service,
    prometheus_value,
    wait_for_records,
)
from tests.support.scripts import raw_as

ALICE = "alice@example.org"
GID_A, GID_B, GID_SVC, GID_NONE = 5201, 5202, 5203, 5299
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agents are told apart by groups")


class World:
    def __init__(self, root: Path) -> None:
        self.root, self.idp = root, Idp()
        self.web = WebCa.create(root / "web")
        cert, key = self.web.issue("ensign")
        port = free_port()
        self.issuer = f"https://127.0.0.1:{port}"
        self.d = d = make_daemon(root, http_config(port, cert, key)
                                 + self.idp.config(root, max_chain_depth=3))
        d.cli("role", "create", "docs-agent", "--audience", f"{DOCS}*", "--scope", "docs.read",
              "--scope", "docs.write", "--may-act-for-users", "--may-redelegate")
        self.a = d.register("agent-a", "unix:uid:0", f"unix:supplementary_gid:{GID_A}",
                            extra=("--role", "docs-agent"))
        self.b = d.register("agent-b", "unix:uid:0", f"unix:supplementary_gid:{GID_B}",
                            extra=("--role", "docs-agent"))
        self.svc = d.register("docs", "unix:uid:0", f"unix:supplementary_gid:{GID_SVC}",
                              extra=("--kind", "service", "--dns-name", "localhost"))
        self.grant = d.cli("delegation", "grant", "--subject", ALICE, "--issuer", IDP, "--agent",
                           str(self.a["id"]), "--scope", "docs.read", "--scope",
                           "docs.write").stdout.strip()
        self.a_files = svid_files(d, root / "svid-a", gid=GID_A)
        self.svc_files = svid_files(d, root / "svid-svc", gid=GID_SVC)

    def token(self, gid: int, subject_token: str, *extra: str) -> str:
        out = exchange(self.d, gid, subject_token, "--audience", DOCS, "--scope",
                       "docs.read", "--scope", "docs.write", *extra)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def report(self, token: str, gid: int | None = GID_SVC, **fields: str) -> Any:
        """`ensign action record` as the service (in its group)."""
        args = ["action", "record", "--token", "-", "--action", fields.get("action", "read"),
                "--resource", fields.get("resource", f"{DOCS}/docs/1"), "--outcome",
                fields.get("outcome", "success"), "-o", "json"]
        if "detail" in fields:
            args += ["--detail", fields["detail"]]
        return _as(self.d, gid, args, token)


def _as(d: Daemon, gid: int | None, args: list[str], stdin: str = "") -> Any:
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint,
           "ENSIGN_ADMIN_SOCKET": f"unix://{d.admin_socket}"}
    return subprocess.run([*ENSIGN, *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=30, extra_groups=[gid] if gid is not None else None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("actions")
    root.chmod(0o755)
    w = World(root)
    yield w
    w.d.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _alice(w: World, **kw: Any) -> str:
    return w.idp.token(sub=ALICE, scope="docs.read docs.write", **kw)


def test_the_trail_runs_from_alices_consent_to_each_document_touched(
        world: World, tmp_path: Path) -> None:
    w, d = world, world.d
    a_id = w.a["spiffe_id"]
    with (docs_service(d, GID_SVC, tmp_path / "http.log", issuer=w.issuer,
                       issuer_ca=w.web.cert) as http_url,
          docs_service(d, GID_SVC, tmp_path / "mtls.log", issuer=w.issuer,
                       issuer_ca=w.web.cert, tls=w.svc_files) as mtls_url):
        # 1. Alice's standing grant; A exchanges her token under it and works over HTTP.
        by_grant = w.token(GID_A, _alice(w))
        with httpx.Client(base_url=http_url, timeout=10) as c:
            assert c.get("/docs/42", headers=_bearer(by_grant)).json()["text"] == "the answer"
            put = c.put("/docs/43", json={"text": "minutes"}, headers=_bearer(by_grant))
            assert put.status_code == 200 and put.json()["written_for"] == ALICE
            assert c.get("/docs/42").status_code == 401  # no token, nothing to attribute
        wait_for_records(d, 2)
        # 2. Alice names A in may_act; A calls over mutual TLS with its SVID, the token bound
        # to that very certificate.
        by_may_act = w.token(GID_A, _alice(w, may_act={"sub": a_id}))
        ctx = ssl.create_default_context(cafile=str(w.a_files[2]))
        ctx.load_cert_chain(str(w.a_files[0]), str(w.a_files[1]))
        with httpx.Client(base_url=mtls_url, verify=ctx, timeout=10) as c:
            me = c.get("/whoami", headers=_bearer(by_may_act)).json()
            assert me == {"kind": "delegated", "human": ALICE, "chain": [a_id],
                          "agent_id": w.a["id"], "scopes": ["docs.read", "docs.write"],
                          "cert_bound": True}
            assert c.get("/docs/42", headers=_bearer(by_may_act)).status_code == 200
            assert c.put("/docs/44", json={"text": "draft"},
                         headers=_bearer(by_may_act)).status_code == 200
        actions = wait_for_records(d, 5)
    assert len(actions) == 5
    for r in actions:
        assert r["agent_id"] == w.a["id"] and r["spiffe_id"] == a_id
        assert r["delegator"] == ALICE and r["details"]["attribution"] == "issued"
        assert r["details"]["reporter"]["spiffe_ids"] == [w.svc["spiffe_id"]]
    assert [r["details"]["grant"] for r in actions[:2]] == [w.grant, w.grant]
    assert [r["details"].get("consent") for r in actions[2:]] == ["may_act"] * 3
    assert [(r["details"]["action"], r["details"]["resource"]) for r in actions] == [
        ("read", f"{DOCS}/docs/42"), ("write", f"{DOCS}/docs/43"),
        ("GET /whoami", f"{DOCS}/whoami"), ("read", f"{DOCS}/docs/42"),
        ("write", f"{DOCS}/docs/44")]
    assert [r["details"]["detail"]["cert_bound"] for r in actions] == [False] * 2 + [True] * 3

    steps = json.loads(d.cli("audit", "trail", "--subject", ALICE, "-o", "json").stdout)
    assert [s["kind"] for s in steps] == ["consent", "exchange", "action", "action", "consent",
                                          "exchange", "action", "action", "action"]
    assert steps[0]["record"]["type"] == "grant.change" and w.grant in steps[0]["text"]
    assert [s["seq"] for s in steps] == sorted(s["seq"] for s in steps)
    text = d.cli("audit", "trail", "--subject", ALICE).stdout.splitlines()
    assert len(text) == 9
    assert all(a_id in line for line in text[1:])
    assert f"grant {w.grant}" in text[1] and f"grant {w.grant}" in text[2]
    assert "may_act" in text[4] and "write https://docs.example.org/docs/44 success" in text[8]
    assert d.cli("audit", "trail", "--agent", str(w.a["id"]), "-o", "json").stdout.count(
        '"kind": "action"') == 5

    # The trail verifies; editing an action afterwards is caught and named.
    ok = d.cli("audit", "verify", "--data-dir", str(d.data_dir))
    assert ok.stdout.startswith("audit ok")
    copy = tmp_path / "copy"
    shutil.copytree(d.data_dir / "audit", copy / "audit")
    seq = actions[0]["seq"]
    for seg in sorted((copy / "audit").glob("segment-*.jsonl")):
        lines = seg.read_bytes().splitlines(keepends=True)
        for i, line in enumerate(lines):
            if json.loads(line)["seq"] == seq:
                lines[i] = line.replace(b"/docs/42", b"/docs/99")
                seg.write_bytes(b"".join(lines))
    bad = d.cli("audit", "verify", "--data-dir", str(copy), check=False)
    assert bad.returncode == 65, bad.stderr
    assert f"(seq {seq}): content does not match its hash" in bad.stderr, bad.stderr


def test_what_a_reporter_claims_about_who_acted_changes_nothing(world: World) -> None:
    w = world
    token = w.token(GID_A, _alice(w))
    claims = {"agent_id": "agt_EVIL", "spiffe_id": "spiffe://example.org/agent/evil",
              "delegator": "mallory@example.org", "grant": "grt_fake", "chain": ["x"]}
    out = w.report(token, detail=json.dumps(claims))
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["agent_id"] == w.a["id"] and answer["delegator"] == ALICE
    record = next(r for r in w.d.audit("--type", "action") if r["seq"] == int(answer["seq"]))
    assert record["agent_id"] == w.a["id"] and record["spiffe_id"] == w.a["spiffe_id"]
    assert record["delegator"] == ALICE and record["details"]["grant"] == w.grant
    assert record["details"]["chain"] == [w.a["spiffe_id"]]
    assert record["details"]["detail"] == claims  # kept, as the reporter's words only
    # Another agent reporting with A's token does not become the actor either.
    out = w.report(token, gid=GID_B)
    record = json.loads(out.stdout)
    assert record["agent_id"] == w.a["id"]
    last = w.d.audit("--type", "action")[-1]
    assert last["details"]["reporter"]["spiffe_ids"] == [w.b["spiffe_id"]]


def test_a_chain_names_both_hops_and_the_consent_it_rests_on(world: World,
                                                             tmp_path: Path) -> None:
    w = world
    a_token = w.token(GID_A, _alice(w))
    b_token = w.token(GID_B, a_token)  # B acts on A's token: the chain B <- A
    with (docs_service(w.d, GID_SVC, tmp_path / "http.log", issuer=w.issuer,
                       issuer_ca=w.web.cert) as url,
          httpx.Client(base_url=url, timeout=10) as c):
        before = len(w.d.audit("--type", "action", "--agent", str(w.b["id"])))
        assert c.get("/whoami", headers=_bearer(b_token)).json()["chain"] == [
            w.b["spiffe_id"], w.a["spiffe_id"]]
        assert c.get("/docs/7", headers=_bearer(b_token)).status_code == 200
        mine = wait_for_records(w.d, before + 2, "--agent", str(w.b["id"]))
    read = mine[-1]
    assert read["details"]["action"] == "read" and read["spiffe_id"] == w.b["spiffe_id"]
    assert read["details"]["chain"] == [w.b["spiffe_id"], w.a["spiffe_id"]]
    assert read["delegator"] == ALICE and read["details"]["grant"] == w.grant
    trail = w.d.cli("audit", "trail", "--subject", ALICE).stdout
    assert f"chain {w.b['spiffe_id']} <- {w.a['spiffe_id']}" in trail
    assert f"by {w.b['spiffe_id']} <- {w.a['spiffe_id']} for {ALICE} grant {w.grant}" in trail
    # The SIEM's view: OCSF API Activity, B acting, the chain down to Alice in its policy.
    out = w.d.cli("audit", "export", "--format", "ocsf", "--type", "action").stdout
    event = next(e for e in map(json.loads, out.splitlines())
                 if e["unmapped"]["seq"] == read["seq"])
    assert ocsf_problems(event) == [], ocsf_problems(event)
    assert (event["class_uid"], event["activity_name"]) == (6003, "Read")
    assert event["actor"]["user"]["uid"] == w.b["id"]
    assert event["actor"]["user"]["name"] == w.b["spiffe_id"]
    (auth,) = event["actor"]["authorizations"]
    assert auth["policy"]["uid"] == w.grant
    assert auth["policy"]["data"]["chain"] == [w.b["spiffe_id"], w.a["spiffe_id"]]
    assert event["api"]["operation"] == "read"
    assert event["resources"][0]["uid"] == f"{DOCS}/docs/7"


def _partner_jwt_svid(tmp: Path) -> str:
    """A real JWT-SVID of another trust domain (its own daemon)."""
    other = make_daemon(tmp, trust_domain="partner.example")
    try:
        other.register("p", "unix:uid:0")
        return fetch_jwt(other.socket, DOCS).svids[0].svid
    finally:
        other.stop()


def test_tokens_not_ours_are_recorded_as_unknown_with_the_reason(
        world: World, short_tmp: Path) -> None:
    w = world
    good = w.token(GID_A, _alice(w))
    header = pyjwt.get_unverified_header(good)
    forged = pyjwt.encode(pyjwt.decode(good, options={"verify_signature": False}),
                          ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                          headers={"kid": header["kid"], "typ": "at+jwt"})
    expiring = w.token(GID_A, _alice(w), "--ttl", "1s")
    cases = {
        "forged": (forged, "does not verify against this trust domain's keys"),
        "other-domain": (_partner_jwt_svid(short_tmp), "another trust domain (partner.example)"),
        "malformed": ("not-a-token", "malformed token"),
        "alg-none": (pyjwt.encode({"sub": w.a["spiffe_id"], "aud": DOCS, "exp": 2**31},
                                  key=None, algorithm="none"), "not a token of this trust domain"),
    }
    while pyjwt.decode(expiring, options={"verify_signature": False})["exp"] >= time.time():
        time.sleep(0.2)
    cases["expired"] = (expiring, "token expired at")
    # One batch on RecordStream, as the service reports them.
    batch = apb.ActionBatch(records=[
        apb.ActionRecord(token=token, action="read", resource=f"{DOCS}/{name}",
                         outcome="denied") for name, (token, _) in cases.items()])
    out = raw_as(0, w.d.socket, "/ensign.actions.v1.Actions/RecordStream",
                 batch.SerializeToString(), streaming=True, extra_groups=(GID_SVC,))
    assert out.startswith("OK "), out
    results = apb.BatchResult.FromString(bytes.fromhex(out[3:])).results
    for (name, (_, why)), answer in zip(cases.items(), results, strict=True):
        assert answer.attribution == "unknown" and why in answer.reason, (name, answer)
        assert answer.seq > 0 and not answer.error
        assert answer.delegator == ("" if name != "expired" else ALICE), name
    # whose the expired token was is still known (and flagged); of the others nothing is
    assert [r.agent_id for r in results] == [""] * 4 + [w.a["id"]]
    records = {r["details"]["resource"]: r for r in w.d.audit("--type", "action")}
    for name, (token, _) in cases.items():
        r = records[f"{DOCS}/{name}"]
        assert r["details"]["attribution"] == "unknown" and r["reason"], name
        assert token not in json.dumps(r)  # a token is never written into the trail
    assert records[f"{DOCS}/expired"]["details"]["expired"] is True
    assert w.d.cli("healthcheck").returncode == 0


def test_a_forged_token_at_the_service_is_refused_and_still_recorded(
        world: World, tmp_path: Path) -> None:
    w = world
    forged = pyjwt.encode({"sub": ALICE, "aud": DOCS, "exp": 2**31, "iat": 1, "jti": "x",
                           "act": {"sub": w.a["spiffe_id"]}},
                          ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                          headers={"kid": "nope", "typ": "at+jwt"})
    with (docs_service(w.d, GID_SVC, tmp_path / "http.log", issuer=w.issuer,
                       issuer_ca=w.web.cert) as url,
          httpx.Client(base_url=url, timeout=10) as c):
        r = c.get("/docs/42", headers=_bearer(forged))
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = w.d.audit("--type", "action", "--result", "denied")
            found = [x for x in found if x["details"]["token"]["kind"] == "delegated"
                     and x["details"]["resource"] == f"{DOCS}/docs/42"]
            if found:
                break
            time.sleep(0.2)
    assert found, "the refused request was not recorded"
    assert found[-1]["details"]["attribution"] == "unknown" and "agent_id" not in found[-1]
    assert "is not one of the issuer's keys" in found[-1]["details"]["detail"]["refused"]


def test_over_mtls_a_token_bound_to_a_is_refused_with_bs_certificate(
        world: World, tmp_path: Path) -> None:
    w = world
    b_files = svid_files(w.d, tmp_path / "svid-b", gid=GID_B)
    token = w.token(GID_A, _alice(w))  # bound to A's certificate

    def client(files: tuple[Path, Path, Path]) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(files[2]))
        ctx.load_cert_chain(str(files[0]), str(files[1]))
        return httpx.Client(base_url=url, verify=ctx, timeout=10)

    with docs_service(w.d, GID_SVC, tmp_path / "mtls.log", issuer=w.issuer,
                      issuer_ca=w.web.cert, tls=w.svc_files) as url:
        with client(b_files) as c:
            r = c.get("/docs/42", headers=_bearer(token))
        assert r.status_code == 401 and "bound to another certificate" in r.text
        with client(w.a_files) as c:
            assert c.get("/docs/42", headers=_bearer(token)).status_code == 200


def test_a_reporter_without_an_identity_is_refused_and_audited(world: World) -> None:
    token = world.token(GID_A, _alice(world))
    out = world.report(token, gid=GID_NONE)
    assert out.returncode == 77 and "no identity issued" in out.stderr, out.stderr
    denied = world.d.audit("--type", "request.denied")
    assert denied[-1]["details"]["method"] == "Record"


def test_bad_records_get_a_clear_error_and_the_daemon_serves_on(world: World) -> None:
    # The CLI checks a detail before sending it ...
    out = world.report("x.y.z", detail='{"a": 1.5}')
    assert out.returncode == 64 and "no floats" in out.stderr and out.stderr.count("\n") == 1
    # ... and the daemon checks every record of a stream, whatever client sent it: a bad one
    # gets its error in its result, the others of its batch are written.
    token = "x.y.z"
    bad = {'{"a": 1.5}': "no floats", "[1]": "must be a JSON object",
           '{"a": 1, "a": 2}': "duplicate key", "{" * 20: "not JSON",
           json.dumps({"x": "y" * 5000}): "longer than 4096 bytes",
           '{"s": "\\ud800"}': "lone surrogate"}
    records = [apb.ActionRecord(token=token, action="read", resource="r", outcome="success",
                                detail=d) for d in bad]
    records += [apb.ActionRecord(token=token, action="read", resource="r", outcome="maybe"),
                apb.ActionRecord(token=token, action="", resource="r", outcome="success"),
                apb.ActionRecord(token=token, action="read", resource="ok", outcome="success")]
    out = raw_as(0, world.d.socket, "/ensign.actions.v1.Actions/RecordStream",
                 apb.ActionBatch(records=records).SerializeToString(), streaming=True,
                 extra_groups=(GID_SVC,))  # as the service
    assert out.startswith("OK "), out
    results = apb.BatchResult.FromString(bytes.fromhex(out[3:])).results
    assert len(results) == len(records)
    for r, why in zip(results, [*bad.values(), "outcome must be one of",
                                "action must be given"], strict=False):
        assert why in r.error and r.seq == 0, (why, r)
    assert results[-1].error == "" and results[-1].seq > 0
    assert results[-1].attribution == "unknown" and "malformed" in results[-1].reason
    assert world.d.cli("healthcheck").returncode == 0


def test_with_the_daemon_stopped_the_service_serves_and_counts_what_it_drops(
        daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    agent = d.register("agent", "unix:uid:0", f"unix:supplementary_gid:{GID_A}")
    d.register("docs", "unix:uid:0", f"unix:supplementary_gid:{GID_SVC}",
               extra=("--kind", "service"))
    token = _as(d, GID_A, ["fetch", "jwt", "--audience", DOCS]).stdout.strip()
    with (docs_service(d, GID_SVC, tmp_path / "svc.log", queue=5) as url,
          httpx.Client(base_url=url, timeout=10) as c):
        assert c.get("/docs/42", headers=_bearer(token)).status_code == 403  # no docs.read
        assert c.get("/whoami", headers=_bearer(token)).json()["chain"] == [agent["spiffe_id"]]
        assert len(wait_for_records(d, 2)) == 2
        d.stop()
        codes = [c.get("/whoami", headers=_bearer(token)).status_code for _ in range(12)]
        assert codes == [200] * 12  # keys cached: serving goes on without the daemon
        health = c.get("/healthz").json()
        metrics = c.get("/metrics").text
        assert health["actions_queued"] + health["actions_dropped"] == 12
        assert health["actions_queued"] <= 5 and health["actions_dropped"] >= 7
        dropped = sum(prometheus_value(metrics, "ensign_sdk_actions_dropped_total",
                                       f'reason="{r}"') for r in ("queue_full", "unconfirmed"))
        assert dropped == health["actions_dropped"]
        assert "dropped" in (tmp_path / "svc.log").read_text()  # and said so in the log
        # Back up: what was queued is written, attributed from the issuance records the daemon
        # read back from its segments at start.
        d.start()
        records = wait_for_records(d, 2 + health["actions_queued"])
    assert len(records) == 2 + health["actions_queued"]
    assert all(r["agent_id"] == agent["id"] and r["details"]["attribution"] == "issued"
               for r in records)
    assert records[0]["result"] == "denied" and records[0]["details"]["detail"]["status"] == 403
