"""The fleet's database from the outside: what a node's credentials can and cannot do, bad input
at start (one line, exit 78, nothing written), and the versioned, idempotent schema."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from ensign.daemon.actions import FleetIssuances, Remote
from ensign.daemon.audit import PUBLIC_KEY, AuditEvent, AuditLog, Process
from ensign.daemon.config import AuditConfig
from ensign.daemon.errors import ConfigError, Conflict
from ensign.daemon.fleet import SCHEMA_VERSION, Shipper, issuance, schema
from ensign.daemon.registry import Entry, PgStore
from ensign.daemon.registry.store import PutEntry, RecordState
from tests.support.daemon import ENSIGN, Daemon
from tests.support.fleet import ADMIN, FleetDb, ensign, fleet_config
from tests.support.postgres import CertIssuer, Cluster, free_port

NODES = ("node-1", "node-2")


@pytest.fixture(scope="module")
def db(pg: Cluster) -> Iterator[FleetDb]:
    """A fleet database with node-1 and node-2 rows, each holding a shipped audit row."""
    fdb = FleetDb.create(pg, NODES)
    for node in NODES:
        fdb.sql(f"INSERT INTO nodes (name, started_at, heartbeat_at) VALUES ('{node}', now(), "
                "now())")
        fdb.sql("INSERT INTO audit_records (node, seq, line, record) "
                f"VALUES ('{node}', 1, '{{\"seq\":1}}', '{{\"seq\":1}}')")
    yield fdb


def _as(db: FleetDb, role: str, statement: str) -> int:
    """Run one statement as `role` over TLS with its client certificate; its row count."""
    with psycopg.connect(db.url(role), autocommit=True) as conn:
        return conn.execute(statement.encode()).rowcount


@pytest.mark.parametrize("statement", [
    "UPDATE entries SET name = 'x'",
    "INSERT INTO roles (name, audiences, created_at, updated_at, version) "
    "VALUES ('r', '[]', 1, 1, 1)",
    "UPDATE registry_head SET version = version + 1",
    "DELETE FROM retired_ids",
    "UPDATE audit_records SET line = '{}' WHERE node = 'node-2'",
    "DELETE FROM audit_records WHERE node = 'node-1'",
    "UPDATE audit_records SET line = '{}' WHERE node = 'node-1'",
    "INSERT INTO audit_records (node, seq, line, record) "
    "VALUES ('node-2', 2, '{\"seq\":2}', '{\"seq\":2}')",
    "INSERT INTO node_keys (use, kid, node, jwk, not_before, not_after) "
    "VALUES ('jwt-svid', 'k', 'node-2', '{}', now(), now() + interval '1h')",
    "INSERT INTO nodes (name, started_at, heartbeat_at) VALUES ('node-9', now(), now())",
])
def test_a_node_role_cannot_write_the_registry_or_another_nodes_rows(
        db: FleetDb, statement: str) -> None:
    with pytest.raises(pg_errors.InsufficientPrivilege):
        _as(db, "node-1", statement)


def test_a_node_role_sees_only_its_own_trail_and_cannot_touch_other_node_rows(
        db: FleetDb) -> None:
    assert _as(db, "node-1", "SELECT * FROM audit_records") == 1  # its own row only
    assert _as(db, "node-1", "UPDATE nodes SET problem = 'x' WHERE name = 'node-2'") == 0
    assert db.rows("SELECT problem FROM nodes WHERE name = 'node-2'") == [("",)]
    # and what it may do, it can: its own row, its own audit rows
    assert _as(db, "node-1", "UPDATE nodes SET problem = 'mine' WHERE name = 'node-1'") == 1
    assert _as(db, "node-1", "INSERT INTO audit_records (node, seq, line, record) "
               "VALUES ('node-1', 2, '{\"seq\":2}', '{\"seq\":2}')") == 1
    with pytest.raises(pg_errors.CheckViolation):  # a record shipped under another seq
        _as(db, "node-1", "INSERT INTO audit_records (node, seq, line, record) "
            "VALUES ('node-1', 3, '{\"seq\":4}', '{\"seq\":4}')")
    # the admin role reads every trail but cannot rewrite one either
    assert _as(db, ADMIN, "SELECT * FROM audit_records") == 3
    with pytest.raises(pg_errors.InsufficientPrivilege):
        _as(db, ADMIN, "DELETE FROM audit_records")


def test_registry_writes_need_the_admin_role(db: FleetDb) -> None:
    """A node configured without admin credentials serves the registry but cannot change it;
    given the node's own URL as the 'admin' one, the database refuses."""

    async def attempt() -> None:
        store = PgStore(db.url("node-1"), db.url("node-1"), "node-1")
        await store.open()
        try:
            e = Entry(id="agt_X", name="x", kind="agent", spiffe_id="spiffe://example.org/x",
                      selectors=("unix:uid:1",), owner="o", created_at=1, updated_at=1)
            await store.write([PutEntry(e, new=True)])
        finally:
            await store.close()

    with pytest.raises(Exception, match="may not write the registry"):
        asyncio.run(attempt())
    assert db.rows("SELECT count(*) FROM entries") == [(0,)]


def test_a_write_from_a_stale_copy_is_refused_not_lost(db: FleetDb) -> None:
    """Two nodes change the same agent from the same revision: the second is refused (Conflict)
    instead of overwriting the first's change."""

    async def scenario() -> tuple[Exception | None, list[tuple[object, ...]]]:
        a = PgStore(db.url("node-1"), db.admin_url, "node-1")
        b = PgStore(db.url("node-2"), db.admin_url, "node-2")
        await a.open()
        await b.open()
        try:
            e = Entry(id="agt_STALE", name="stale", kind="agent",
                      spiffe_id="spiffe://example.org/agent/agt_STALE",
                      selectors=("unix:uid:1",), owner="o", created_at=1, updated_at=1)
            await a.write([PutEntry(e, new=True), RecordState(e.id, 1, "", "active", "r", "t")])
            await a.write([PutEntry(replace(e, owner="a", revision=2))])
            err: Exception | None = None
            try:
                await b.write([PutEntry(replace(e, owner="b", revision=2))])
            except Conflict as c:
                err = c
            changes = await b.changes_since(0)
            return err, [(x.id, x.owner, x.revision) for x in changes.entries]
        finally:
            await a.close()
            await b.close()

    err, rows = asyncio.run(scenario())
    assert isinstance(err, Conflict) and "changed on another node" in str(err)
    assert ("agt_STALE", "a", 2) in rows


# -- bad input at start: one line, exit 78, nothing written ------------------------------------


def _start(root: Path, fleet: str) -> tuple[subprocess.CompletedProcess[str], Daemon]:
    root.mkdir(mode=0o755)
    d = Daemon(root=root, extra_config=fleet)
    d.write_config()  # at info level: what an operator sees at start
    d.config_path.write_text(d.config_path.read_text().replace('"debug"', '"info"'))
    out = subprocess.run([*ENSIGN, "daemon", "--config", str(d.config_path)],
                         capture_output=True, text=True, timeout=60)
    return out, d


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_bad_database_input_is_one_line_exit_78_and_nothing_written(
        db: FleetDb, pg: Cluster, short_tmp: Path) -> None:
    newer = FleetDb.create(pg, ("node-5",))
    newer.sql("UPDATE ensign_schema SET version = 99")
    stranger = CertIssuer(short_tmp, "another CA")
    cases = {
        "wrong url": ('node_name = "node-5"\n[fleet]\ndatabase_url = "mysql://db/ensign"\n',
                      "must be a postgresql:// URL"),
        "unreachable": (f'node_name = "node-5"\n[fleet]\ndatabase_url = '
                        f'"postgresql://node-5@127.0.0.1:{free_port()}/x?connect_timeout=2"\n',
                        "Connection refused"),
        "wrong credentials": (fleet_config(db, "node-1").replace(
            db.url("node-1"), db.url("node-1", cert_for="node-2")),
            'certificate authentication failed for user "node-1"'),
        "untrusted certificate": (fleet_config(db, "node-1").replace(
            db.url("node-1"), db.url("node-1", ca=stranger)), "fleet database"),
        "role of another node": (fleet_config(db, "node-1").replace(
            f'database_url = "{db.url("node-1")}"', f'database_url = "{db.url("node-2")}"'),
            "cannot act as node 'node-1'"),
        "newer schema": (fleet_config(newer, "node-5"),
                         "schema version 99, newer than this release knows"),
    }
    for name, (config, expected) in cases.items():
        out, d = _start(short_tmp / name.replace(" ", "-"), config)
        assert out.returncode == 78, (name, out.stderr)
        line = _one_line(out)
        assert expected in line, (name, line)
        assert not d.data_dir.exists(), name  # nothing written on this node ...
    # ... nor in the databases
    assert db.rows("SELECT name FROM nodes ORDER BY name") == [(n,) for n in NODES]
    assert newer.rows("SELECT count(*) FROM nodes") == [(0,)]


def test_fleet_init_is_idempotent_upgrades_in_order_and_refuses_a_newer_schema(
        pg: Cluster) -> None:
    fresh = FleetDb.create(pg, ("node-7",))  # created once by the fixture helper
    again = ensign("fleet", "init", "--database-url", fresh.owner_url, "--node", "node-7")
    assert again.returncode == 0, again.stderr
    assert f"fleet schema at version {SCHEMA_VERSION} (already current)" in again.stdout
    # a release with one more migration upgrades, applying only the new one
    extra = (*schema.MIGRATIONS, "CREATE TABLE ensign_next (x int);")
    before, after = asyncio.run(schema.init(fresh.owner_url, migrations=extra))
    assert (before, after) == (SCHEMA_VERSION, SCHEMA_VERSION + 1)
    assert asyncio.run(schema.init(fresh.owner_url, migrations=extra)) == (after, after)
    # ... and this release now refuses that database, naming both versions
    out = ensign("fleet", "init", "--database-url", fresh.owner_url)
    assert out.returncode == 78
    assert f"schema version {after}, newer than this release knows ({SCHEMA_VERSION})" \
        in _one_line(out)
    with pytest.raises(ConfigError, match="newer than this release"):
        schema.check_version(after, fresh.owner_url)
    for url, expected in ((f"postgresql://x@127.0.0.1:{free_port()}/x", "Connection refused"),
                          ("postgresql://x@127.0.0.1:notaport/x", "invalid")):
        bad = ensign("fleet", "init", "--database-url", url)
        assert bad.returncode == 78 and expected in _one_line(bad), bad.stderr


def test_a_node_without_admin_credentials_serves_but_cannot_change_the_registry(
        pg: Cluster, short_tmp: Path) -> None:
    fdb = FleetDb.create(pg, ("node-6",))
    root = short_tmp / "n6"
    root.mkdir(mode=0o755)
    d = Daemon(root=root, extra_config=fleet_config(fdb, "node-6", admin=False))
    d.start()
    try:
        out = d.cli("agent", "register", "--name", "x", "--owner", "o", "--selector",
                    "unix:uid:1", check=False)
        assert out.returncode == 77
        assert "no fleet admin credentials ([fleet] admin_database_url)" in _one_line(out)
        assert d.cli("agent", "list", "-o", "json").stdout.strip() == "[]"
        assert fdb.rows("SELECT count(*) FROM entries") == [(0,)]
    finally:
        d.stop()


def test_audit_verify_fleet_names_the_node_and_record_where_a_shipped_chain_breaks(
        pg: Cluster, tmp_path: Path) -> None:
    fdb = FleetDb.create(pg, ("node-8",))

    async def write_and_ship() -> int:
        log = AuditLog(AuditConfig(checkpoint_every=5), tmp_path)
        log.open()
        for i in range(20):
            await log.record(AuditEvent(type="attestation", reason=f"r{i}"))
        await log.close()  # a daemon.stop record and a last checkpoint
        store = PgStore(fdb.url("node-8"), "", "node-8")
        await store.pool.open()
        try:
            async with store.connection() as conn:
                await conn.execute(
                    "INSERT INTO nodes (name, started_at, heartbeat_at, audit_chain, "
                    "audit_public_key, audit_seq) VALUES ('node-8', now(), now(), %s, %s, %s)",
                    (log.chain, (log.dir / PUBLIC_KEY).read_text(), log.seq))
            shipper = Shipper(log.dir, "node-8", lambda: log.seq, store.connection)
            await shipper.ship_once()
            return shipper.shipped
        finally:
            await store.close()

    shipped = asyncio.run(write_and_ship())
    url = fdb.admin_url
    ok = ensign("audit", "verify", "--fleet", "--database-url", url)
    assert ok.returncode == 0, ok.stderr
    assert f"node-8: ok; {shipped} records (seq 1..{shipped})" in ok.stdout
    assert "0 behind" in ok.stdout
    # a removed record
    fdb.sql("DELETE FROM audit_records WHERE node = 'node-8' AND seq = 12")
    gone = ensign("audit", "verify", "--fleet", "--database-url", url)
    assert gone.returncode == 65
    assert ("node node-8 record seq 13: seq 13 where 12 was expected (record 12 is missing"
            in _one_line(gone))
    # an altered record (its content no longer matches its hash), before that
    fdb.sql("UPDATE audit_records SET line = replace(line, '\"r6\"', '\"r66\"'), "
            "record = replace(line, '\"r6\"', '\"r66\"')::jsonb "
            "WHERE node = 'node-8' AND seq = 7")
    bad = ensign("audit", "verify", "--fleet", "--database-url", url, "-o", "json")
    assert bad.returncode == 65
    [verdict] = json.loads(bad.stdout)
    assert verdict["problems"][0] == \
        "node node-8 record seq 7 (seq 7): content does not match its hash (altered)"
    # a checkpoint not signed by the node's published audit key
    fdb.sql("UPDATE audit_checkpoints SET line = replace(line, '\"segment\"', '\"segmnt\"') "
            "WHERE node = 'node-8' AND seq = (SELECT min(seq) FROM audit_checkpoints)")
    forged = ensign("audit", "verify", "--fleet", "--database-url", url, "-o", "json")
    [verdict] = json.loads(forged.stdout)
    assert any(p.startswith("node node-8 checkpoint 1 (seq ")
               and p.endswith("signature does not verify") for p in verdict["problems"])


# -- action attribution across nodes: by jti, through one function, nothing else --------------

A = "spiffe://example.org/agent/agt_A"
B = "spiffe://example.org/agent/agt_B"


def _exchanged(jti: str, agent: str = "agt_B") -> AuditEvent:
    """A token.exchanged record as a node writes it, with what is not attribution beside it."""
    return AuditEvent(type="token.exchanged", agent_id=agent, spiffe_id=B, entry_id=agent,
                      roles=("docs",), delegator="alice", audience=("https://docs",),
                      scopes=("docs.read",), reason="not attribution",
                      process=Process(pid=4242, uid=1000, gid=1000, exe_sha256="cd" * 32),
                      details={"jti": jti, "act": [B, A], "grant": "grt_1",
                               "consent": {"grant": "grt_1", "other": "x"}, "expires_in": 300,
                               "client": {"cert_sha256": "ab" * 16}})


async def _write_and_ship(fdb: FleetDb, node: str, where: Path, events: list[AuditEvent],
                          ship: bool = True) -> AuditLog:
    """`events` in a real audit log of `node`, shipped with the node's own credentials."""
    log = AuditLog(AuditConfig(), where)
    log.open()
    for event in events:
        await log.record(event)
    await log.close()
    fdb.sql(f"INSERT INTO nodes (name, started_at, heartbeat_at) VALUES ('{node}', now(), now()) "
            "ON CONFLICT DO NOTHING")
    if ship:
        await _ship(fdb, node, log)
    return log


async def _ship(fdb: FleetDb, node: str, log: AuditLog) -> None:
    store = PgStore(fdb.url(node), "", node)
    await store.pool.open()
    try:
        await Shipper(log.dir, node, lambda: log.seq, store.connection).ship_once()
    finally:
        await store.close()


def _attribution(fdb: FleetDb, role: str, node: str, jti: str) -> dict[str, Any] | None:
    async def ask() -> dict[str, Any] | None:
        async with await psycopg.AsyncConnection.connect(fdb.url(role)) as conn:
            return await issuance(conn, node, jti)

    return asyncio.run(ask())


def test_a_node_reads_another_nodes_issuance_attribution_by_jti_and_nothing_else(
        pg: Cluster, tmp_path: Path) -> None:
    fdb = FleetDb.create(pg, NODES)
    asyncio.run(_write_and_ship(fdb, "node-1", tmp_path / "n1", [_exchanged("jti-1")]))
    # node-2 ships a record of its own claiming node-1's jti for another agent
    asyncio.run(_write_and_ship(fdb, "node-2", tmp_path / "n2",
                                [_exchanged("jti-1", agent="agt_EVIL")]))
    got = _attribution(fdb, "node-2", "node-1", "jti-1")
    assert got is not None
    assert {k: v for k, v in got.items() if k != "time"} == {  # attribution fields only
        "type": "token.exchanged", "result": "success", "agent_id": "agt_B", "spiffe_id": B,
        "entry_id": "agt_B", "roles": ["docs"], "delegator": "alice",
        "audience": ["https://docs"], "scopes": ["docs.read"],
        "details": {"jti": "jti-1", "act": [B, A], "grant": "grt_1", "expires_in": 300,
                    "consent": {"grant": "grt_1"}}}
    assert _attribution(fdb, "node-2", "node-1", "jti-2") is None
    assert _attribution(fdb, "node-1", "node-2", "jti-1")["agent_id"] == "agt_EVIL"  # type: ignore[index]
    with psycopg.connect(fdb.url("node-2"), autocommit=True) as conn:
        # still none of node-1's raw records, by table or by a temporary table standing in
        assert conn.execute("SELECT count(*) FROM audit_records WHERE node = 'node-1'"
                            ).fetchall() == [(0,)]
        conn.execute("CREATE TEMP TABLE audit_records (LIKE public.audit_records)")
        conn.execute("INSERT INTO pg_temp.audit_records (node, seq, line, record, type, result) "
                     "VALUES ('node-1', 0, '{}', '{\"agent_id\": \"agt_EVIL\", \"details\": "
                     "{\"jti\": \"jti-1\"}}', 'token.exchanged', 'success')")
        [(shadowed,)] = conn.execute("SELECT issuance_attribution('node-1', 'jti-1')").fetchall()
        assert shadowed["agent_id"] == "agt_B"
    # the admin role reads trails, but this function is the nodes' (EXECUTE to ensign_node only)
    with pytest.raises(pg_errors.InsufficientPrivilege):
        _attribution(fdb, ADMIN, "node-1", "jti-1")
    # the planner can find a record by node and jti without reading the table
    with psycopg.connect(fdb.owner_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = " ".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT seq FROM audit_records WHERE node = 'node-1' AND "
            "record #>> '{details,jti}' = 'jti-1' AND type IN ('token.exchanged', "
            "'svid.issued')").fetchall())
        assert "audit_records_issuance" in plan, plan


@pytest.mark.parametrize("statement", [
    "INSERT INTO audit_records (node, seq, line, record) VALUES ('node-1', 2, '{\"seq\":2}', "
    "'{\"seq\":2,\"type\":\"token.exchanged\",\"agent_id\":\"agt_EVIL\","
    "\"details\":{\"jti\":\"jti-x\"}}')",
    "UPDATE audit_records SET record = jsonb_set(record, '{agent_id}', '\"agt_EVIL\"') "
    "WHERE node = 'node-1'",
    "CREATE OR REPLACE FUNCTION issuance_attribution(issuer text, token_jti text) "
    "RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$",
    "DROP FUNCTION issuance_attribution(text, text)",
    "ALTER FUNCTION issuance_attribution(text, text) SECURITY INVOKER",
    "DROP INDEX audit_records_issuance",
])
def test_a_node_cannot_write_or_alter_attribution_as_another_node(
        db: FleetDb, statement: str) -> None:
    with pytest.raises(pg_errors.InsufficientPrivilege):
        _as(db, "node-2", statement)


def test_an_issuance_shipped_moments_after_the_report_is_attributed_on_another_node(
        pg: Cluster, tmp_path: Path) -> None:
    """Shipping lag: node-2 is asked about node-1's token before node-1 has shipped its record;
    the bounded wait finds it once shipped. A record that never ships is `unknown`, saying so."""
    fdb = FleetDb.create(pg, NODES)
    now = datetime.now(UTC)

    async def scenario() -> tuple[Remote, Remote, int]:
        log = await _write_and_ship(fdb, "node-1", tmp_path / "n1", [_exchanged("late")],
                                    ship=False)
        asked = asyncio.Event()
        store = PgStore(fdb.url("node-2"), "", "node-2")
        await store.pool.open()
        calls = 0

        async def lookup(node: str, jti: str) -> dict[str, Any] | None:
            nonlocal calls
            calls += 1
            async with store.connection() as conn:
                found = await issuance(conn, node, jti)
            asked.set()
            return found

        try:
            # a generous wait: the answer comes as soon as the record is there
            fleet = FleetIssuances(lookup, down=lambda: None, clock=lambda: now, wait=60)
            finding = asyncio.ensure_future(fleet.find("node-1", "late", int(now.timestamp())))
            await asyncio.wait_for(asked.wait(), 30)
            missed_first = calls
            await _ship(fdb, "node-1", log)
            found = await asyncio.wait_for(finding, 60)
            never = await FleetIssuances(lookup, down=lambda: None, clock=lambda: now,
                                         wait=0.3).find("node-1", "never", int(now.timestamp()))
            return found, never, missed_first
        finally:
            await store.close()

    found, never, missed_first = asyncio.run(scenario())
    assert missed_first == 1  # asked once before the record was shipped
    assert found.reason == "" and found.found is not None
    assert (found.found[0].agent_id, found.found[0].chain) == ("agt_B", (B, A))
    assert found.found[0].grant == "grt_1"
    assert never.found is None
    assert never.reason == ("not in the fleet database yet (node node-1 ships its trail in the "
                            "background; waited 0.3 s)")


def test_fleet_init_upgrades_a_version_1_fleet_and_attributes_what_was_shipped_before(
        pg: Cluster, tmp_path: Path) -> None:
    """A fleet created by the previous release (schema version 1) with a trail already shipped:
    `ensign fleet init` applies version 2 only, and the records shipped before are found."""
    fdb = FleetDb(pg, "fleetv1")
    pg.sql(f"CREATE DATABASE {fdb.name}", db="postgres")
    assert asyncio.run(schema.init(fdb.owner_url, NODES, (ADMIN,),
                                   migrations=schema.MIGRATIONS[:1])) == (0, 1)
    asyncio.run(_write_and_ship(fdb, "node-1", tmp_path / "n1", [_exchanged("before")]))
    with pytest.raises(pg_errors.UndefinedFunction):
        _attribution(fdb, "node-2", "node-1", "before")
    out = ensign("fleet", "init", "--database-url", fdb.owner_url)
    assert out.returncode == 0, out.stderr
    assert fdb.rows("SELECT version FROM ensign_schema") == [(SCHEMA_VERSION,)] == [(2,)]
    got = _attribution(fdb, "node-2", "node-1", "before")
    assert got is not None and (got["agent_id"], got["delegator"]) == ("agt_B", "alice")
    again = ensign("fleet", "init", "--database-url", fdb.owner_url)
    assert "already current" in again.stdout, again.stdout
