"""Reading the fleet for operators: `ensign fleet status`, `ensign audit list --fleet` and
`ensign audit verify --fleet`. Straight from the database, so they work with any node down.

Every node's trail is visible to the admin role; a node's own role sees only its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ensign.daemon.audit import AuditFilter, ChainCheck, Report, chain_id, checked_checkpoints
from ensign.daemon.errors import ConfigError
from ensign.daemon.fleet.schema import check_version, connect, current_version
from ensign.daemon.registry.postgres import describe, one_line


@dataclass
class NodeStatus:
    name: str
    heartbeat_at: datetime
    heartbeat_age: float
    started_at: datetime
    software: str
    registry_version: int
    audit_seq: int
    audit_shipped: int
    problem: str
    keys: list[str] = field(default_factory=list)  # JWT-SVID key ids
    delegation_keys: list[str] = field(default_factory=list)  # delegated-token key ids

    @property
    def audit_behind(self) -> int:
        return max(0, self.audit_seq - self.audit_shipped)


@dataclass
class FleetStatus:
    database: str
    schema_version: int
    registry_version: int
    nodes: list[NodeStatus]


async def _open(url: str, wait: float) -> psycopg.AsyncConnection[Any]:
    conn = await connect(url, wait, autocommit=True)
    try:
        check_version(await current_version(conn), url)
    except BaseException:
        await conn.close()
        raise
    return conn


async def status(url: str, wait: float = 5.0) -> FleetStatus:
    conn = await _open(url, wait)
    try:
        cur = await conn.execute(
            "SELECT (SELECT version FROM ensign_schema), (SELECT version FROM registry_head)")
        row = await cur.fetchone()
        assert row is not None
        out = FleetStatus(describe(url), int(row[0]), int(row[1]), [])
        cur = await conn.execute(
            "SELECT name, heartbeat_at, extract(epoch FROM now() - heartbeat_at), started_at, "
            "software, registry_version, audit_seq, audit_shipped, problem FROM nodes "
            "ORDER BY name")
        by_name: dict[str, NodeStatus] = {}
        for r in await cur.fetchall():
            node = NodeStatus(r[0], r[1], float(r[2]), r[3], r[4], int(r[5]), int(r[6]),
                              int(r[7]), r[8])
            by_name[node.name] = node
            out.nodes.append(node)
        cur = await conn.execute("SELECT node, use, kid FROM node_keys WHERE not_after > now() "
                                 "ORDER BY node, not_before, kid")
        for node_name, use, kid in await cur.fetchall():
            if node_name in by_name:
                n = by_name[node_name]
                if use == "jwt-svid":
                    n.keys.append(kid)
                elif use == "delegation":
                    n.delegation_keys.append(kid)
        return out
    except psycopg.Error as e:
        raise ConfigError(f"fleet database {describe(url)}: {one_line(e)}") from None
    finally:
        await conn.close()


def _where(flt: AuditFilter) -> tuple[str, list[Any]]:
    clauses, args = [], []
    for column, value in (("agent_id", flt.agent), ("subject", flt.subject),
                          ("delegator", flt.delegator), ("result", flt.result)):
        if value:
            clauses.append(f"{column} = %s")
            args.append(value)
    if flt.type:
        if flt.type.endswith("."):
            clauses.append("starts_with(type, %s)")
        else:
            clauses.append("type = %s")
        args.append(flt.type)
    if flt.since:
        clauses.append("time >= %s")
        args.append(flt.since)
    if flt.until:
        clauses.append("time < %s")
        args.append(flt.until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


async def records(url: str, flt: AuditFilter, limit: int = 0,
                  wait: float = 5.0) -> list[tuple[str, str]]:
    """(node, record line) of every shipped record matching, in time order across nodes."""
    conn = await _open(url, wait)
    try:
        where, args = _where(flt)
        sql = f"SELECT node, line FROM audit_records{where} ORDER BY time, node, seq"  # noqa: S608
        if limit:
            sql += " LIMIT %s"
            args.append(limit)
        cur = await conn.execute(sql.encode(), args)
        return [(str(n), str(line)) for n, line in await cur.fetchall()]
    except psycopg.Error as e:
        raise ConfigError(f"fleet database {describe(url)}: {one_line(e)}") from None
    finally:
        await conn.close()


@dataclass
class NodeVerdict:
    node: str
    report: Report
    local_seq: int  # the node's own log, as of its last heartbeat
    shipped: int
    heartbeat_age: float

    @property
    def behind(self) -> int:
        return max(0, self.local_seq - self.shipped)


async def verify(url: str, wait: float = 5.0) -> list[NodeVerdict]:
    """Every node's chain as shipped: sequence, links, hashes, chain id, and its checkpoints'
    signatures by the audit key the node published."""
    conn = await _open(url, wait)
    out: list[NodeVerdict] = []
    try:
        async with conn.transaction():  # one snapshot; the server-side cursors need one too
            return await _verify_all(conn, out)
    except psycopg.Error as e:
        raise ConfigError(f"fleet database {describe(url)}: {one_line(e)}") from None
    finally:
        await conn.close()


async def _verify_all(conn: psycopg.AsyncConnection[Any],
                      out: list[NodeVerdict]) -> list[NodeVerdict]:
    cur = await conn.execute(
        "SELECT name, audit_public_key, audit_chain, audit_seq, audit_shipped, "
        "extract(epoch FROM now() - heartbeat_at) FROM nodes ORDER BY name")
    for name, pem, chain, local_seq, shipped, age in await cur.fetchall():
        report = Report()
        key = _public_key(pem, name, report)
        if key is not None and chain and chain_id(key) != chain:
            report.fail(f"node {name}: its published audit key is not the key of chain "
                        f"{chain}")
        cps_cur = await conn.execute(
            "SELECT line FROM audit_checkpoints WHERE node = %s ORDER BY seq", (name,))
        lines = [str(r[0]) for r in await cps_cur.fetchall()]
        cps = checked_checkpoints(lines, key, report, name=f"node {name} checkpoint")
        check = ChainCheck(report, chain or None, cps)
        async with conn.cursor(name=f"audit_{len(out)}") as rows:
            await rows.execute("SELECT seq, line FROM audit_records WHERE node = %s "
                               "ORDER BY seq", (name,))
            async for seq, line in rows:
                if not check.add(f"node {name} record seq {seq}", line):
                    break
        if report.records:
            check.finish()
        out.append(NodeVerdict(name, report, int(local_seq), int(shipped), float(age)))
    return out


def _public_key(pem: str, node: str, report: Report) -> ec.EllipticCurvePublicKey | None:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        report.fail(f"node {node}: no usable audit public key published")
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        report.fail(f"node {node}: its audit public key is not an EC key")
        return None
    return key
