"""Many nodes, one registry and one audit trail on PostgreSQL (the fleet): three real daemons on
a real cluster. (Many nodes, one trust bundle without a fleet: test_org_ca.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient

from tests.support.clients import fetch_jwt
from tests.support.daemon import ENSIGN, Daemon, needs_root
from tests.support.fleet import FleetDb, Node, Trio, fleet_config, wait_until
from tests.support.fleet import org_ca as _org_ca
from tests.support.https import WebCa, http_config
from tests.support.idp import CAL, Idp, exchange
from tests.support.net import free_port
from tests.support.postgres import Cluster
from tests.support.streams import X509Stream

NODES = ("node-1", "node-2", "node-3")
# One issuer for the fleet (its load-balanced URL): a delegated token is the fleet's by its `iss`
ISSUER = "https://ensign.example.org"
GID_A, GID_B = 5101, 5102  # delegating agents are told apart by supplementary group


@pytest.fixture(scope="module")
def fleet_idp() -> Idp:
    return Idp()


@pytest.fixture(scope="module")
def trio(pg: Cluster, fleet_idp: Idp) -> Iterator[Trio]:
    """Three daemons sharing one fleet database and one organisation CA, with delegation (one
    trusted IdP) and the HTTPS endpoint on, for the whole module (the tests run in file order:
    later ones stop and restart the database and the nodes)."""
    root = Path(tempfile.mkdtemp(prefix="ensf", dir="/tmp"))
    root.chmod(0o755)
    db = FleetDb.create(pg, NODES)
    cert, key, _ = _org_ca(root)
    web = WebCa.create(root / "web")
    trio = Trio(db, web_ca=web.cert)
    try:
        for name in NODES:
            port = free_port()
            d = Daemon(root=root / name, extra_config=fleet_config(db, name, upstream=(cert, key)))
            d.root.mkdir(mode=0o755)
            d.extra_config += fleet_idp.config(d.root) + http_config(
                port, *web.issue(name), issuer=ISSUER)
            d.start()
            trio.nodes.append(Node(name, d, https=f"https://127.0.0.1:{port}"))
        yield trio
    finally:
        trio.stop()
        if not pg.running():
            pg.start()
        shutil.rmtree(root, ignore_errors=True)


def _local_lines(d: Daemon) -> list[str]:
    lines: list[str] = []
    for seg in sorted((d.data_dir / "audit").glob("segment-*.jsonl")):
        lines += seg.read_text().splitlines()
    return lines


def _shipped_lines(db: FleetDb, node: str) -> list[str]:
    return [r[0] for r in db.rows("SELECT line FROM audit_records WHERE node = %s ORDER BY seq",
                                  node)]


def _caught_up(db: FleetDb, n: Node) -> bool:
    """Every record of the node's local log is in the database (none lost, none twice)."""
    return _shipped_lines(db, n.name) == _local_lines(n.daemon)


def _shipped(db: FleetDb, node: str, jti: str) -> None:
    """Wait until `node` has shipped its issuance record of `jti` to the fleet database."""
    wait_until(lambda: db.rows("SELECT 1 FROM audit_records WHERE node = %s AND "
                               "record #>> '{details,jti}' = %s", node, jti), timeout=30)


def _get(n: Node, path: str, web_ca: Path | None) -> Any:
    """GET a JSON document from the node's HTTPS endpoint."""
    tls = ssl.create_default_context(cafile=str(web_ca))
    return httpx.get(f"{n.https}{path}", verify=tls, timeout=10).json()


def _token_jwks(n: Node, web_ca: Path | None) -> dict[str, dict[str, Any]]:
    """kid -> JWK of the delegated-token keys at the node's jwks_uri (found via its metadata)."""
    meta = _get(n, "/.well-known/oauth-authorization-server", web_ca)
    # the metadata names the fleet's issuer URL; this node serves the same path
    assert meta["jwks_uri"] == f"{ISSUER}/jwks"
    return {k["kid"]: k for k in _get(n, "/jwks", web_ca)["keys"]}


def _action(d: Daemon, gid: int, token: str) -> dict[str, Any]:
    """`ensign action record` with `token` on the node's socket, as the agent in group `gid`;
    the record's answer (its seq as a number)."""
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": d.endpoint}
    out = subprocess.run([*ENSIGN, "action", "record", "--token", "-", "--action", "read",
                          "--resource", f"{CAL}/events/1", "--outcome", "success", "-o", "json"],
                         input=token, capture_output=True, text=True, env=env, timeout=30,
                         extra_groups=[gid])
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    answer["seq"] = int(answer["seq"])
    return answer


@needs_root
def test_a_delegated_token_from_one_node_verifies_and_chains_on_another(
        trio: Trio, fleet_idp: Idp) -> None:
    """Each node publishes its delegated-token keys and serves the fleet's union: a token minted
    on node 1 verifies against node 2's jwks_uri and with `ensign token verify` there, an agent
    chains it on node 2, and node 3 verifies what node 2 minted. (First in the module: the
    agents' exchanges must not find other agents of uid 0 registered by later tests.)"""
    n1, n2, n3 = trio.nodes
    # every node serves every node's key (one each), and none of them in a JWT-SVID bundle
    union = wait_until(lambda: (k := [set(_token_jwks(n, trio.web_ca)) for n in trio.nodes])
                       and k[0] == k[1] == k[2] and len(k[0]) == 3 and k[0])
    owners = dict(trio.db.rows("SELECT kid, node FROM node_keys WHERE use = 'delegation'"))
    assert sorted(owners[kid] for kid in union) == list(NODES)
    jwt_bundle = set(json.loads(n2.cli("status", "-o", "json").stdout)["fleet"]["jwt_keys"]
                     .split(", "))
    assert len(jwt_bundle) >= 3 and not union & jwt_bundle
    # the SPIFFE bundle served to federated domains holds every node's JWT-SVID keys, no others
    spiffe = _get(n2, "/.well-known/spiffe-bundle", trio.web_ca)["keys"]
    assert {k["kid"] for k in spiffe if k["use"] == "jwt-svid"} == jwt_bundle
    n1.cli("role", "create", "calendar-agent", "--audience", f"{CAL}*", "--scope",
           "calendar.read", "--may-act-for-users", "--may-redelegate")
    a = n1.daemon.register("dlg-a", "unix:uid:0", f"unix:supplementary_gid:{GID_A}",
                           extra=("--role", "calendar-agent"))
    b = n1.daemon.register("dlg-b", "unix:uid:0", f"unix:supplementary_gid:{GID_B}",
                           extra=("--role", "calendar-agent"))
    wait_until(lambda: str(b["id"]) in n2.agents() and str(b["id"]) in n3.agents())
    first = exchange(n1.daemon, GID_A, fleet_idp.token(may_act={"sub": a["spiffe_id"]}),
                     "--audience", CAL, "--scope", "calendar.read")
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    kid = pyjwt.get_unverified_header(token)["kid"]
    assert owners[kid] == "node-1"
    # a resource server that reads node 2's jwks_uri verifies node 1's token (RFC 9068)
    jwk = _token_jwks(n2, trio.web_ca)[kid]
    claims = pyjwt.decode(token, pyjwt.PyJWK.from_dict(jwk).key, algorithms=[jwk["alg"]],
                          audience=CAL, issuer=ISSUER)
    assert (claims["sub"], claims["act"]["sub"]) == ("alice", a["spiffe_id"])
    verified = n2.cli("token", "verify", token, "--audience", CAL)  # Delegation.TokenKeys
    assert verified.stdout.startswith(f"valid: alice via {a['spiffe_id']}; scope calendar.read")
    # agent B chains it on node 2: node 2 accepts node 1's token as a delegated token of ours
    second = exchange(n2.daemon, GID_B, token, "--audience", CAL, "--scope", "calendar.read")
    assert second.returncode == 0, second.stderr
    chained = second.stdout.strip()
    assert owners[pyjwt.get_unverified_header(chained)["kid"]] == "node-2"
    out = n3.cli("token", "verify", chained, "--audience", CAL, "-o", "json")
    assert json.loads(out.stdout)["actors"] == [b["spiffe_id"], a["spiffe_id"]]
    # a token signed by a key no node published is refused on every node
    forged = pyjwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                          headers={"kid": kid[:-2] + "xx", "typ": "at+jwt"})
    refused = n3.cli("token", "verify", forged, "--audience", CAL, check=False)
    assert refused.returncode == 65, refused.stderr
    chain_refused = exchange(n3.daemon, GID_B, forged, "--audience", CAL, "--scope",
                             "calendar.read")
    assert chain_refused.returncode == 77, chain_refused.stderr
    # Actions done with these tokens (issue 20): every node attributes a token any node of the
    # trust domain issued, the issuing node from memory, the others from its issuance record as
    # shipped to the fleet database (read by jti; a report before it is shipped waits for it,
    # within a bound: test_fleet_security.py; here the record is shipped first).
    here = _action(n1.daemon, GID_B, token)
    assert (here["attribution"], here["agent_id"], here["delegator"]) == ("issued", a["id"],
                                                                          "alice")
    _shipped(trio.db, "node-1", claims["jti"])
    there = _action(n2.daemon, GID_B, token)
    assert (there["attribution"], there["agent_id"], there["delegator"], there["reason"]) == (
        "issued", a["id"], "alice", "")
    record = next(r for r in n2.daemon.audit("--type", "action") if r["seq"] == there["seq"])
    assert record["details"]["token"]["node"] == "node-1"
    assert record["details"]["token"]["jti"] == claims["jti"]
    assert (record["details"]["chain"], record["details"]["consent"]) == ([a["spiffe_id"]],
                                                                          "may_act")
    mine = _action(n2.daemon, GID_B, chained)  # node 2 issued the chained token itself
    assert (mine["attribution"], mine["agent_id"]) == ("issued", b["id"])
    _shipped(trio.db, "node-2", pyjwt.decode(chained, options={"verify_signature": False})["jti"])
    far = _action(n3.daemon, GID_A, chained)  # node 2's chain, reported on node 3: both hops
    assert (far["attribution"], far["agent_id"], far["delegator"]) == ("issued", b["id"],
                                                                       "alice")
    record = next(r for r in n3.daemon.audit("--type", "action") if r["seq"] == far["seq"])
    assert record["details"]["chain"] == [b["spiffe_id"], a["spiffe_id"]]
    assert record["details"]["token"]["node"] == "node-2"
    forged_here = _action(n2.daemon, GID_B, forged)
    assert forged_here["attribution"] == "unknown"
    assert "does not verify against this trust domain's keys" in forged_here["reason"]


def test_register_on_one_node_fetch_on_the_others_suspend_ends_streams_everywhere(
        trio: Trio) -> None:
    n1, n2, n3 = trio.nodes
    rec = n1.daemon.register("roamer", "unix:uid:0")
    for n in (n2, n3):  # the registration reaches the others' copies, and they issue from them
        wait_until(lambda n=n: rec["id"] in n.agents())
        client = WorkloadApiClient(socket_path=n.daemon.endpoint)
        try:
            svid = client.fetch_x509_svid()
        finally:
            client.close()
        assert str(svid.spiffe_id) == rec["spiffe_id"]
    streams = [X509Stream(n.daemon.endpoint) for n in trio.nodes]
    try:
        for s in streams:
            assert s.wait(lambda s=s: s.contexts, 10)
        n3.cli("agent", "suspend", str(rec["id"]), "--reason", "leaving the fleet")
        for n, s in zip(trio.nodes, streams, strict=True):
            assert s.wait(lambda s=s: s.errors, 5), f"{n.name}: stream did not end"
            _, err = s.errors[0]
            assert "PERMISSION_DENIED" in repr(err) or "no identity" in str(err), err
            # (how soon is bench/fleet.py's figure, p99 over many changes, not one timed assert)
        for n in trio.nodes:
            assert n.agents()[str(rec["id"])] == "suspended"
    finally:
        for s in streams:
            s.close()
    # The change is audited once, by the node that made it.
    wait_until(lambda: all(_caught_up(trio.db, n) for n in trio.nodes))
    changes = trio.db.rows("SELECT node, line FROM audit_records WHERE subject = %s "
                           "AND type = 'registry.change'", rec["id"])
    actions = sorted((node, json.loads(line)["details"]["action"]) for node, line in changes)
    assert actions == [("node-1", "register"), ("node-3", "suspend")]
    n3.cli("agent", "resume", str(rec["id"]))


def test_a_jwt_svid_from_one_node_validates_on_every_node(trio: Trio) -> None:
    n1, n2, n3 = trio.nodes
    wait_until(lambda: all(n.agents().get(a) == "active" for n in trio.nodes
                           for a in n1.agents()))
    token = n1.cli("fetch", "jwt", "--audience", "payments").stdout.strip()
    kid = pyjwt.get_unverified_header(token)["kid"]
    # node 2's ValidateJWTSVID knows node 1's key (published in the database)
    out = n2.cli("validate", "jwt", "--audience", "payments", "--token", token, "-o", "json")
    assert json.loads(out.stdout)["spiffe_id"].startswith("spiffe://example.org/agent/")
    # py-spiffe checks the token itself against node 3's JWT bundle: the fleet's union
    client = WorkloadApiClient(socket_path=n3.daemon.endpoint)
    try:
        bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(
            TrustDomain("example.org"))
        assert bundle is not None and bundle.get_jwt_authority(kid) is not None
        svid = JwtSvid.parse_and_validate(token, bundle, {"payments"})
    finally:
        client.close()
    assert str(svid.spiffe_id).startswith("spiffe://example.org/agent/")
    # a token signed by a key no node published is refused
    forged = pyjwt.encode({"sub": str(svid.spiffe_id), "aud": ["payments"],
                           "exp": int(time.time()) + 60}, ec.generate_private_key(ec.SECP256R1()),
                          algorithm="ES256", headers={"kid": kid + "x"})
    bad = n2.cli("validate", "jwt", "--audience", "payments", "--token", forged, check=False)
    assert bad.returncode == 65 and "not found in the trust bundle" in bad.stderr
    # its agent suspended on node 3: node 1's token is refused by node 2 (the fleet's copy)
    agent = str(pyjwt.decode(token, options={"verify_signature": False})["agent_id"])
    n3.cli("agent", "suspend", agent, "--reason", "token check")
    try:
        wait_until(lambda: n2.agents()[agent] == "suspended")
        gone = n2.cli("validate", "jwt", "--audience", "payments", "--token", token, check=False)
        assert gone.returncode == 65, gone.stderr
        assert gone.stderr.strip() == "ensign: INVALID_ARGUMENT: the token's agent is suspended"
    finally:
        n3.cli("agent", "resume", agent)
    wait_until(lambda: n2.agents()[agent] == "active")
    again = n2.cli("validate", "jwt", "--audience", "payments", "--token", token)
    assert again.returncode == 0


def test_fleet_status_and_audit_list_over_every_node(trio: Trio) -> None:
    n1 = trio.nodes[0]
    url = trio.db.admin_url
    wait_until(lambda: all(_caught_up(trio.db, n) for n in trio.nodes))
    st = json.loads(n1.cli("fleet", "status", "--database-url", url, "-o", "json").stdout)
    assert [n["name"] for n in st["nodes"]] == list(NODES)
    served_jwt: set[str] = set()
    served_delegation: set[str] = set()
    for n, row in zip(trio.nodes, st["nodes"], strict=True):
        own = json.loads(n.cli("status", "-o", "json").stdout)["fleet"]
        assert set(row["jwt_keys"]) <= set(own["jwt_keys"].split(", "))  # the union, served
        assert set(row["delegation_keys"]) <= set(own["delegation_keys"].split(", "))
        assert len(row["delegation_keys"]) == 1 and not set(row["jwt_keys"]) & set(
            row["delegation_keys"])
        served_jwt |= set(row["jwt_keys"])
        served_delegation |= set(row["delegation_keys"])
        assert row["heartbeat_age_seconds"] < 30
        assert row["audit_shipped"] > 0
    assert set(own["jwt_keys"].split(", ")) == served_jwt  # no more than the nodes published
    assert set(own["delegation_keys"].split(", ")) == served_delegation
    text = n1.cli("fleet", "status", "--database-url", url).stdout
    assert "node-2" in text and "AUDIT SHIPPED" in text and "DELEGATION KEYS" in text
    listed = json.loads(n1.cli("audit", "list", "--fleet", "--database-url", url,
                               "--type", "daemon.", "-o", "json").stdout)
    assert sorted({r["node"] for r in listed}) == list(NODES)
    assert {r["type"] for r in listed} == {"daemon.start"}
    table = n1.cli("audit", "list", "--fleet", "--database-url", url,
                   "--type", "daemon.").stdout.splitlines()
    assert table[0].split() == ["NODE", "TIME", "SEQ", "TYPE", "RESULT", "WHO", "DETAIL"]
    assert sorted({line.split()[0] for line in table[1:]}) == list(NODES)
    assert all(line.index("daemon.start") == table[0].index("TYPE") for line in table[1:])


@pytest.mark.timeout(300)
def test_database_down_nodes_keep_issuing_refuse_writes_and_catch_up(
        trio: Trio, pg: Cluster) -> None:
    n1, n2, n3 = trio.nodes
    rec = n1.daemon.register("steady", "unix:uid:0")
    wait_until(lambda: all(str(rec["id"]) in n.agents() for n in trio.nodes))
    pg.stop()
    try:
        for n in trio.nodes:  # health: still serving, and says why it is degraded
            health = wait_until(lambda n=n: (h := n.health())["notice"] and h)
            assert health["status"] == "SERVING"
            assert "unreachable" in health["notice"] and "registry writes" in health["notice"]
            # SVIDs keep coming from the copy: a new JWT (not cached) and an X.509-SVID
            jwts = fetch_jwt(str(n.daemon.socket), f"offline-{n.name}").svids
            assert rec["spiffe_id"] in [j.spiffe_id for j in jwts]
            if n is n1:
                offline = next(j.svid for j in jwts if j.spiffe_id == rec["spiffe_id"])
            x509 = json.loads(n.cli("fetch", "x509", "-o", "json").stdout)
            assert rec["spiffe_id"] in [s["spiffe_id"] for s in x509]
        # an action with node 1's token on node 2: recorded at once, unknown, saying why
        cut_off = _action(n2.daemon, GID_A, offline)
        assert (cut_off["attribution"], cut_off["agent_id"]) == ("unknown", "")
        assert cut_off["reason"].startswith("issued by node node-1 of this trust domain (its "
                                            "key), but its issuance record of jti "), cut_off
        assert "the fleet database cannot be asked (" in cut_off["reason"], cut_off
        refused = n2.cli("agent", "suspend", str(rec["id"]), "--reason", "x", check=False)
        assert refused.returncode == 69
        [line] = refused.stderr.strip().splitlines()
        assert "fleet database postgresql://fleet-admin@127.0.0.1" in line, line
        assert "registry writes" in line or "unavailable" in line, line
        assert "degraded" in " ".join(n3.cli("status").stdout.split())
        shown = json.loads(n3.cli("agent", "show", str(rec["id"]), "-o", "json").stdout)
        assert (shown["id"], shown["state"]) == (rec["id"], "active")  # reads: from the copy
    finally:
        pg.start()
    for n in trio.nodes:  # back by themselves
        wait_until(lambda n=n: not n.health()["notice"], timeout=30)
    # node 1 ships its backlog: the same token is now attributed on node 2
    _shipped(trio.db, "node-1", pyjwt.decode(offline, options={"verify_signature": False})["jti"])
    back = _action(n2.daemon, GID_A, offline)
    assert (back["attribution"], back["agent_id"], back["spiffe_id"]) == (
        "issued", rec["id"], rec["spiffe_id"])
    n2.cli("agent", "suspend", str(rec["id"]), "--reason", "after the outage")
    for n in trio.nodes:
        wait_until(lambda n=n: n.agents()[str(rec["id"])] == "suspended")


@pytest.mark.timeout(300)
def test_a_change_made_while_a_node_was_cut_off_reaches_it(trio: Trio) -> None:
    n1, _, n3 = trio.nodes
    db = trio.db
    db.sql('ALTER ROLE "node-3" NOLOGIN')
    try:
        db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE usename = 'node-3'")
        wait_until(lambda: n3.health()["notice"])
        late = n1.daemon.register("late", "unix:uid:0")
        n1.cli("agent", "decommission", str(late["id"]), "--reason", "short-lived")
        assert str(late["id"]) not in n3.agents()  # node 3 serves its copy meanwhile
    finally:
        db.sql('ALTER ROLE "node-3" LOGIN')
    wait_until(lambda: n3.agents().get(str(late["id"])) == "decommissioned", timeout=30)
    wait_until(lambda: not n3.health()["notice"])
    # Nothing of any node's trail lost or doubled across the outages.
    wait_until(lambda: all(_caught_up(db, n) for n in trio.nodes), timeout=30)
    out = n1.cli("audit", "verify", "--fleet", "--database-url", db.admin_url, "-o", "json")
    verdicts = json.loads(out.stdout)
    assert [(v["node"], v["ok"], v["behind"]) for v in verdicts] == [
        (name, True, 0) for name in NODES]


@pytest.mark.timeout(300)
def test_kill_9_mid_shipping_loses_and_doubles_nothing(trio: Trio) -> None:
    n2 = trio.nodes[1]
    stop = threading.Event()

    def load() -> None:  # every fetch is an audit record the shipper must carry
        i = 0
        while not stop.is_set():
            i += 1
            with contextlib.suppress(Exception):
                fetch_jwt(str(n2.daemon.socket), f"load-{i % 50}")

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        for _ in range(10):
            base = len(_shipped_lines(trio.db, n2.name))
            wait_until(lambda b=base: len(_shipped_lines(trio.db, n2.name)) > b + 5, every=0.02)
            n2.daemon.stop(signal.SIGKILL)
            n2.daemon.start()
    finally:
        stop.set()
        worker.join(30)
    wait_until(lambda: _caught_up(trio.db, n2), timeout=30)
    local = _local_lines(n2.daemon)
    assert _shipped_lines(trio.db, n2.name) == local  # the shipped chain is the local one
    out = n2.cli("audit", "verify", "--fleet", "--database-url", trio.db.admin_url)
    assert f"node-2: ok; {len(local)} records" in out.stdout
    assert n2.cli("audit", "verify", "--config", str(n2.daemon.config_path)).returncode == 0
