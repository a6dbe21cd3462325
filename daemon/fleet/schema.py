"""The fleet's schema in PostgreSQL: versioned migrations, the database roles and what each may do.

`ensign fleet init` applies the migrations this release has and the database lacks, each in its
own transaction under an advisory lock (two inits at once wait for each other), and refuses a
database whose schema is newer than this release knows. A daemon never changes the schema: it
checks the version at start and refuses to run against an older or newer one (exit 78).

Roles (cluster-wide, created once): `ensign_node` (every node's login role is a member) reads the
registry, every node's row and published keys, and writes only its own node row, keys and audit
rows (row-level security: `node = current_user`, so a node's login role is named after the node);
`ensign_admin` writes the registry and reads every node's audit trail. Audit rows are never
updated or deleted by either. A node reads another node's audit trail only through
`issuance_attribution(node, jti)` (version 2): the attribution fields of one issuance record, for
a node that holds the token (action attribution in a fleet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ensign.daemon.errors import ConfigError
from ensign.daemon.registry.postgres import describe, one_line

NODE_ROLE = "ensign_node"
ADMIN_ROLE = "ensign_admin"
LOCK_KEY = 0x656E7369676E  # "ensign": one init at a time per database

_V1 = """
CREATE TABLE ensign_schema (
    id integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ensign_schema (id, version) VALUES (1, 0);

CREATE TABLE registry_head (id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL);
INSERT INTO registry_head VALUES (1, 0);

CREATE TABLE entries (
    id text PRIMARY KEY,
    name text NOT NULL,
    kind text NOT NULL,
    spiffe_id text NOT NULL,
    selectors text NOT NULL,
    x509_ttl bigint NOT NULL DEFAULT 0,
    jwt_ttl bigint NOT NULL DEFAULT 0,
    dns_names text NOT NULL DEFAULT '[]',
    hint text NOT NULL DEFAULT '',
    owner text NOT NULL DEFAULT '',
    purpose text NOT NULL DEFAULT '',
    capabilities text NOT NULL DEFAULT '[]',
    roles text NOT NULL DEFAULT '[]',
    metadata text NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'active',
    expires_at bigint NOT NULL DEFAULT 0,
    created_by bigint NOT NULL DEFAULT 0,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    revision bigint NOT NULL DEFAULT 1,
    federates_with text NOT NULL DEFAULT '[]',
    version bigint NOT NULL
);
CREATE UNIQUE INDEX entries_live_name ON entries (name) WHERE state <> 'decommissioned';
CREATE INDEX entries_version ON entries (version);
CREATE TABLE retired_ids (
    id text PRIMARY KEY, retired_at bigint NOT NULL, version bigint NOT NULL);
CREATE INDEX retired_ids_version ON retired_ids (version);
CREATE TABLE state_history (
    seq bigserial PRIMARY KEY,
    entry_id text NOT NULL,
    at bigint NOT NULL,
    from_state text NOT NULL,
    to_state text NOT NULL,
    reason text NOT NULL,
    actor text NOT NULL,
    node text NOT NULL DEFAULT ''
);
CREATE INDEX state_history_entry ON state_history (entry_id);
CREATE TABLE grants (
    id text PRIMARY KEY,
    subject text NOT NULL,
    issuer text NOT NULL,
    agent_id text NOT NULL,
    scopes text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL DEFAULT 0,
    revoked_at bigint NOT NULL DEFAULT 0,
    created_by text NOT NULL,
    version bigint NOT NULL
);
CREATE INDEX grants_version ON grants (version);
CREATE TABLE roles (
    name text PRIMARY KEY,
    audiences text NOT NULL,
    scopes text NOT NULL DEFAULT '[]',
    max_ttl bigint NOT NULL DEFAULT 0,
    may_act_for_users integer NOT NULL DEFAULT 0,
    may_redelegate integer NOT NULL DEFAULT 0,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    revision bigint NOT NULL DEFAULT 1,
    may_introspect integer NOT NULL DEFAULT 0,
    version bigint NOT NULL
);
CREATE TABLE role_tombstones (name text NOT NULL, version bigint NOT NULL,
                              PRIMARY KEY (name, version));

CREATE TABLE nodes (
    name text PRIMARY KEY,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    software text NOT NULL DEFAULT '',
    registry_version bigint NOT NULL DEFAULT 0,
    audit_chain text NOT NULL DEFAULT '',
    audit_public_key text NOT NULL DEFAULT '',
    audit_seq bigint NOT NULL DEFAULT 0,
    audit_shipped bigint NOT NULL DEFAULT 0,
    problem text NOT NULL DEFAULT ''
);
-- Public keys a node signs with, by use ('jwt-svid' today; delegated-token keys later). A kid
-- is unique per use in the whole fleet; a key stays until no token it signed can be valid.
CREATE TABLE node_keys (
    use text NOT NULL,
    kid text NOT NULL,
    node text NOT NULL,
    jwk text NOT NULL,
    not_before timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (use, kid)
);
-- A node's records as its log holds them (`line`, byte for byte); the columns queried are
-- derived from the record, and its seq must be the one it was shipped under.
CREATE TABLE audit_records (
    node text NOT NULL,
    seq bigint NOT NULL,
    line text NOT NULL,
    record jsonb NOT NULL,
    chain text GENERATED ALWAYS AS (coalesce(record ->> 'chain', '')) STORED,
    time text GENERATED ALWAYS AS (coalesce(record ->> 'time', '')) STORED,
    type text GENERATED ALWAYS AS (coalesce(record ->> 'type', '')) STORED,
    result text GENERATED ALWAYS AS (coalesce(record ->> 'result', '')) STORED,
    agent_id text GENERATED ALWAYS AS (coalesce(record ->> 'agent_id', '')) STORED,
    subject text GENERATED ALWAYS AS (coalesce(record ->> 'subject', '')) STORED,
    delegator text GENERATED ALWAYS AS (coalesce(record ->> 'delegator', '')) STORED,
    PRIMARY KEY (node, seq),
    CHECK (seq = (record ->> 'seq')::bigint)
);
CREATE INDEX audit_records_time ON audit_records (time);
CREATE INDEX audit_records_agent ON audit_records (agent_id) WHERE agent_id <> '';
CREATE TABLE audit_checkpoints (
    node text NOT NULL, seq bigint NOT NULL, line text NOT NULL, PRIMARY KEY (node, seq));

DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ensign_node') THEN
        CREATE ROLE ensign_node NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ensign_admin') THEN
        CREATE ROLE ensign_admin NOLOGIN;
    END IF;
END $$;

GRANT SELECT ON ensign_schema, registry_head, entries, retired_ids, state_history, grants, roles,
    role_tombstones, nodes, node_keys TO ensign_node, ensign_admin;
GRANT SELECT, INSERT ON audit_records, audit_checkpoints TO ensign_node;
GRANT SELECT ON audit_records, audit_checkpoints TO ensign_admin;
GRANT INSERT, UPDATE ON nodes TO ensign_node;
GRANT INSERT, UPDATE, DELETE ON node_keys TO ensign_node;
GRANT UPDATE ON registry_head TO ensign_admin;
GRANT INSERT, UPDATE, DELETE ON entries, retired_ids, grants, roles, role_tombstones
    TO ensign_admin;
GRANT INSERT ON state_history TO ensign_admin;
GRANT USAGE ON SEQUENCE state_history_seq_seq TO ensign_admin;

ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
CREATE POLICY nodes_read ON nodes FOR SELECT USING (true);
CREATE POLICY nodes_insert_own ON nodes FOR INSERT TO ensign_node
    WITH CHECK (name = current_user);
CREATE POLICY nodes_update_own ON nodes FOR UPDATE TO ensign_node
    USING (name = current_user) WITH CHECK (name = current_user);

ALTER TABLE node_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY node_keys_read ON node_keys FOR SELECT USING (true);
CREATE POLICY node_keys_insert_own ON node_keys FOR INSERT TO ensign_node
    WITH CHECK (node = current_user);
CREATE POLICY node_keys_update_own ON node_keys FOR UPDATE TO ensign_node
    USING (node = current_user) WITH CHECK (node = current_user);
CREATE POLICY node_keys_delete_own ON node_keys FOR DELETE TO ensign_node
    USING (node = current_user);

ALTER TABLE audit_records ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_records_admin ON audit_records FOR SELECT TO ensign_admin USING (true);
CREATE POLICY audit_records_read_own ON audit_records FOR SELECT TO ensign_node
    USING (node = current_user);
CREATE POLICY audit_records_insert_own ON audit_records FOR INSERT TO ensign_node
    WITH CHECK (node = current_user);

ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_checkpoints_admin ON audit_checkpoints FOR SELECT TO ensign_admin
    USING (true);
CREATE POLICY audit_checkpoints_read_own ON audit_checkpoints FOR SELECT TO ensign_node
    USING (node = current_user);
CREATE POLICY audit_checkpoints_insert_own ON audit_checkpoints FOR INSERT TO ensign_node
    WITH CHECK (node = current_user);
"""

# Version 2: who a token was issued to, for any node that holds the token (issue 20 in a fleet).
# A node reads another node's issuance attribution by (issuing node, jti) through one SECURITY
# DEFINER function, never its raw records: the function returns only the attribution fields of
# that node's first successful issuance record of the jti (no process, no line, no other record),
# and only to ensign_node. The attribution is what the issuing node shipped in its own
# hash-chained trail (RLS: only it writes rows under its name), so no node can write or alter
# another's, and `audit verify --fleet` covers it. The caller names the node whose key signed the
# token: another node shipping a record with the same jti changes nothing. search_path is pinned
# to the table's schema, pg_temp last, so a caller's temporary table cannot stand in for it.
_V2 = """
CREATE INDEX IF NOT EXISTS audit_records_issuance
    ON audit_records (node, (record #>> '{details,jti}'))
    WHERE type IN ('token.exchanged', 'svid.issued');

DO $do$ BEGIN
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION issuance_attribution(issuer text, token_jti text) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %I, pg_temp AS $body$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'type', r.type, 'time', r.time, 'result', r.result,
        'agent_id', r.record -> 'agent_id', 'spiffe_id', r.record -> 'spiffe_id',
        'entry_id', r.record -> 'entry_id', 'roles', r.record -> 'roles',
        'delegator', r.record -> 'delegator', 'audience', r.record -> 'audience',
        'scopes', r.record -> 'scopes',
        'details', jsonb_strip_nulls(jsonb_build_object(
            'jti', d -> 'jti', 'kind', d -> 'kind', 'not_after', d -> 'not_after',
            'expires_in', d -> 'expires_in', 'act', d -> 'act', 'grant', d -> 'grant',
            'consent', jsonb_strip_nulls(jsonb_build_object(
                'grant', d -> 'consent' -> 'grant', 'may_act', d -> 'consent' -> 'may_act'))))))
    FROM audit_records r, LATERAL (SELECT r.record -> 'details') AS x(d)
    WHERE r.node = issuer AND r.record #>> '{details,jti}' = token_jti
        AND r.type IN ('token.exchanged', 'svid.issued') AND r.result IN ('success', '')
    ORDER BY r.seq LIMIT 1
$body$$f$, (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = 'audit_records'::regclass));
END $do$;
REVOKE ALL ON FUNCTION issuance_attribution(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION issuance_attribution(text, text) TO ensign_node;
"""

#: Migration n (1-based) brings the schema from version n-1 to n. Append only: a release never
#: edits one that has shipped.
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)


async def current_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """The schema version, or None when the database has no ensign schema yet."""
    cur = await conn.execute("SELECT to_regclass('ensign_schema') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT version FROM ensign_schema WHERE id = 1")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def check_version(found: int | None, url: str, known: int = SCHEMA_VERSION) -> None:
    """Refuse a database this release cannot run against (ConfigError: exit 78)."""
    where = describe(url)
    if found is None:
        raise ConfigError(f"fleet database {where} has no ensign schema: run "
                          "`ensign fleet init --database-url URL` as its owner")
    if found > known:
        raise ConfigError(f"fleet database {where} has schema version {found}, newer than this "
                          f"release knows ({known}): upgrade ensign on this node")
    if found < known:
        raise ConfigError(f"fleet database {where} has schema version {found}, older than this "
                          f"release needs ({known}): run `ensign fleet init` to upgrade it")


async def connect(url: str, wait: float = 5.0, **kw: Any) -> psycopg.AsyncConnection[Any]:
    """Connect for a command or at start: any failure is one line naming the database (exit 78:
    at start a bad URL, host or credential is a configuration error)."""
    try:
        return await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, int(wait)),
                                                     **kw)
    except (psycopg.Error, ValueError) as e:
        raise ConfigError(f"fleet database {describe(url)}: {one_line(e)}") from None


async def init(url: str, nodes: Sequence[str] = (), admins: Sequence[str] = (),
               wait: float = 5.0,
               migrations: Sequence[str] = MIGRATIONS) -> tuple[int, int]:
    """Create or upgrade the schema; make `nodes`/`admins` login roles members of ensign_node /
    ensign_admin. Returns (version before, version after). Idempotent."""
    conn = await connect(url, wait, autocommit=True)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            before = await current_version(conn)
            have = before or 0
            if have > len(migrations):
                check_version(have, url, len(migrations))
        for n in range(have, len(migrations)):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                if (await current_version(conn) or 0) != n:
                    continue  # another init applied it meanwhile
                await conn.execute(migrations[n].encode())
                await conn.execute("UPDATE ensign_schema SET version = %s, updated_at = now() "
                                   "WHERE id = 1", (n + 1,))
        async with conn.transaction():
            for names, group in ((nodes, NODE_ROLE), (admins, ADMIN_ROLE)):
                for name in names:
                    await _login_role(conn, name, group)
        return before or 0, max(have, len(migrations))
    except psycopg.Error as e:
        raise ConfigError(f"fleet database {describe(url)}: {one_line(e)}") from None
    finally:
        await conn.close()


async def _login_role(conn: psycopg.AsyncConnection[Any], name: str, group: str) -> None:
    cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    if await cur.fetchone() is None:
        await conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    await conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group),
                                                         sql.Identifier(name)))
