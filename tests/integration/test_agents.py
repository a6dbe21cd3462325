"""Agents as first-class identities: lifecycle, roles and least privilege, declarative apply."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import grpc
import jwt as pyjwt
import pytest

from tests.support.cli import one_line_error
from tests.support.clients import fetch_jwt, status_of
from tests.support.daemon import Daemon, make_daemon
from tests.support.streams import X509Stream


@pytest.fixture
def strict_daemon(short_tmp: Path):  # type: ignore[no-untyped-def]
    """A daemon with the shipped policy: no roles, no JWT-SVIDs."""
    d = make_daemon(short_tmp, allow_audiences=False)
    yield d
    if d.alive():
        d.stop()


def test_suspend_resume_decommission(daemon: Daemon) -> None:
    rec = daemon.register("worker", "unix:uid:0")
    sock = str(daemon.socket)
    assert len(fetch_jwt(sock, "a").svids) == 1
    s = X509Stream(daemon.endpoint)
    try:
        assert s.wait(lambda: s.contexts, 10)
        first_serial = s.contexts[0].default_svid.leaf.serial_number
        out = daemon.cli("agent", "suspend", str(rec["id"]), "--reason", "investigating")
        assert out.stdout.split() == [rec["id"], "suspended"]
        # The open stream is ended by the suspension (no timed assertion: speed is bench's).
        assert s.wait(lambda: s.errors, 10), "the stream was not ended"
        _, err = s.errors[0]
        assert "PERMISSION_DENIED" in repr(err) or "no identity" in str(err), err
    finally:
        s.close()
    code, _ = status_of(fetch_jwt, sock, "a")
    assert code == grpc.StatusCode.PERMISSION_DENIED

    daemon.cli("agent", "resume", str(rec["id"]))
    s = X509Stream(daemon.endpoint)
    try:
        assert s.wait(lambda: s.contexts, 10)
        assert s.contexts[0].default_svid.leaf.serial_number != first_serial  # fresh SVID
    finally:
        s.close()

    daemon.cli("agent", "decommission", str(rec["id"]), "--reason", "retired")
    code, _ = status_of(fetch_jwt, sock, "a")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    again = daemon.cli("agent", "resume", str(rec["id"]), check=False)
    assert "decommissioned" in one_line_error(again, 65)
    shown = json.loads(daemon.cli("agent", "show", str(rec["id"]), "-o", "json").stdout)
    assert shown["state"] == "decommissioned"
    assert [(h["to_state"], h.get("reason", "")) for h in shown["history"]] == [
        ("active", "registered"), ("suspended", "investigating"), ("active", ""),
        ("decommissioned", "retired")]
    # The name is free again; the id is not.
    new = daemon.register("worker", "unix:uid:0")
    assert new["id"] != rec["id"]
    assert fetch_jwt(sock, "a").svids[0].spiffe_id == new["spiffe_id"]


def test_roles_limit_audiences_and_ttl(strict_daemon: Daemon) -> None:
    d = strict_daemon
    d.cli("role", "create", "reader", "--audience", "https://api.example.org/*",
          "--scope", "docs:read", "--max-ttl", "2m")
    rec = d.register("reader-agent", "unix:uid:0", extra=("--role", "reader"))
    sock = str(d.socket)
    token = fetch_jwt(sock, "https://api.example.org/docs").svids[0].svid
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["roles"] == ["reader"] and claims["agent_id"] == rec["id"]
    assert claims["exp"] - claims["iat"] <= 120  # the role's max_ttl caps the default 5m
    code, details = status_of(fetch_jwt, sock, "https://billing.example.org")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "https://billing.example.org" in details
    held = d.cli("role", "delete", "reader", check=False)
    assert str(rec["id"]) in one_line_error(held, 65)  # data, not usage
    # Widening the role takes effect at once.
    d.cli("role", "update", "reader", "--audience", "https://api.example.org/*",
          "--audience", "https://billing.example.org")
    assert len(fetch_jwt(sock, "https://billing.example.org").svids) == 1


def test_no_roles_means_no_jwt_by_default(strict_daemon: Daemon) -> None:
    strict_daemon.register("plain", "unix:uid:0")
    code, details = status_of(fetch_jwt, str(strict_daemon.socket), "anything")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "no roles" in details
    assert strict_daemon.cli("fetch", "x509").returncode == 0  # X.509 is not audience-bound


def test_expiry_decommissions_without_restart(daemon: Daemon) -> None:
    rec = daemon.register("ephemeral", "unix:uid:0", extra=("--expires-at", "2s"))
    assert len(fetch_jwt(str(daemon.socket), "a").svids) == 1
    deadline = time.monotonic() + 6
    state = ""
    while time.monotonic() < deadline:
        shown = daemon.cli("agent", "show", str(rec["id"]), "-o", "json").stdout
        state = json.loads(shown)["state"]
        if state == "decommissioned":
            break
        time.sleep(0.2)
    assert state == "decommissioned"
    code, _ = status_of(fetch_jwt, str(daemon.socket), "a")
    assert code == grpc.StatusCode.PERMISSION_DENIED


_FILE = """
[[role]]
name = "reader"
audiences = ["https://api.example.org/*"]
max_ttl = "10m"

[[agent]]
name = "indexer"
owner = "alice@example.org"
purpose = "indexes the docs"
selectors = ["unix:uid:1001"]
roles = ["reader"]
capabilities = ["index"]

[[agent]]
name = "paused"
owner = "bob@example.org"
selectors = ["unix:uid:1002"]
state = "suspended"
"""


def test_apply_dry_run_then_apply_then_noop(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(_FILE)
    plan = daemon.cli("agent", "apply", "-f", str(path), "--dry-run")
    assert "role_create" in plan.stdout and "create" in plan.stdout and "would" in plan.stdout
    assert json.loads(daemon.cli("agent", "list", "-o", "json").stdout) == []
    assert json.loads(daemon.cli("role", "list", "-o", "json").stdout) == []
    daemon.cli("agent", "apply", "-f", str(path))
    agents = {a["name"]: a for a in json.loads(daemon.cli("agent", "list", "-o", "json").stdout)}
    assert agents["indexer"]["roles"] == ["reader"] and agents["paused"]["state"] == "suspended"
    second = daemon.cli("agent", "apply", "-f", str(path))
    assert "nothing to do" in second.stdout
    # Edit the file: the change is planned as an update of the same id.
    path.write_text(_FILE.replace('purpose = "indexes the docs"', 'purpose = "indexes wikis"'))
    third = daemon.cli("agent", "apply", "-f", str(path), "-o", "json")
    steps = json.loads(third.stdout)["steps"]
    assert steps == [{"action": "update", "target": agents["indexer"]["id"], "detail": "purpose"}]
    # --prune decommissions what the file no longer lists.
    path.write_text(_FILE.split("[[agent]]\nname = \"paused\"")[0])
    daemon.cli("agent", "apply", "-f", str(path), "--prune")
    paused = json.loads(daemon.cli("agent", "show", agents["paused"]["id"], "-o", "json").stdout)
    assert paused["state"] == "decommissioned"


@pytest.mark.parametrize(
    ("args", "expect", "code"),
    [
        (["--selector", "unix:uid:5", "--owner", "o", "--role", "nope"], "unknown role", 64),
        (["--selector", "unix:uid:5", "--owner", "o", "--name", "taken"], "ALREADY_EXISTS", 65),
        (["--selector", "bogus:x", "--owner", "o"], "invalid selector", 64),
        (["--selector", "unix:uid:5"], "owner is required", 64),
        (["--selector", "unix:sha256:zz", "--owner", "o"], "64 lowercase hex digits", 64),
        (["--selector", "unix:uid:99999999999999", "--owner", "o"], "number below 2^32", 64),
        (["--selector", "unix:gid:wheel", "--owner", "o"], "number below 2^32", 64),
    ],
    ids=["unknown-role", "duplicate-name", "bad-selector", "no-owner", "sha256-typo",
         "uid-range", "gid-name"],
)
def test_bad_registrations_change_nothing(daemon: Daemon, args: list[str], expect: str,
                                          code: int) -> None:
    daemon.register("taken", "unix:uid:4")
    before = daemon.cli("agent", "list", "-o", "json").stdout
    name = [] if "--name" in args else ["--name", "fresh"]
    result = daemon.cli("agent", "register", *name, *args, check=False)
    assert expect in one_line_error(result, code)
    assert daemon.cli("agent", "list", "-o", "json").stdout == before


def test_apply_rejects_bad_files_whole(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_FILE + '\n[[agent]]\nname = "broken"\nowner = "x"\nselectors = ["nope"]\n')
    result = daemon.cli("agent", "apply", "-f", str(path), check=False)
    assert "invalid selector" in one_line_error(result, 65)  # data error
    assert json.loads(daemon.cli("agent", "list", "-o", "json").stdout) == []
    assert json.loads(daemon.cli("role", "list", "-o", "json").stdout) == []  # roles too
    path.write_text('[[agent]]\nname = "x"\nselektors = []\n')
    result = daemon.cli("agent", "apply", "-f", str(path), check=False)
    assert "unknown key" in one_line_error(result, 65)
    missing = daemon.cli("agent", "apply", "-f", str(tmp_path / "nope.toml"), check=False)
    assert "nope.toml" in one_line_error(missing, 66)


def test_list_filters(daemon: Daemon) -> None:
    daemon.cli("role", "create", "ops", "--audience", "ops")
    a = daemon.register("alpha-1", "unix:uid:11", extra=("--owner", "ann", "--capability", "x",
                                                          "--role", "ops"))
    b = daemon.register("beta-1", "unix:uid:12", extra=("--owner", "ben", "--kind", "service"))

    def ids(*flt: str) -> list[str]:
        out = daemon.cli("agent", "list", *flt, "-o", "json").stdout
        return [x["id"] for x in json.loads(out)]

    assert ids("--owner", "ann") == [a["id"]]
    assert ids("--capability", "x") == [a["id"]]
    assert ids("--role", "ops") == [a["id"]]
    assert ids("--kind", "service") == [b["id"]]
    assert ids("--selector", "unix:uid:11") == [a["id"]]
    assert ids("--name-prefix", "alpha") == [a["id"]]
    assert ids("--state", "suspended") == []
    typo = daemon.cli("agent", "list", "--state", "suspnded", check=False)
    assert "unknown state 'suspnded'" in one_line_error(typo, 64)


def test_an_expiry_in_the_past_is_refused(daemon: Daemon) -> None:
    past = daemon.cli("agent", "register", "--name", "born-dead", "--owner", "o", "--selector",
                      "unix:uid:7", "--expires-at", "2020-01-01T00:00:00Z", check=False)
    assert "in the past" in one_line_error(past, 65)
    assert json.loads(daemon.cli("agent", "list", "-o", "json").stdout) == []
    rec = daemon.register("alive", "unix:uid:7")
    late = daemon.cli("agent", "update", str(rec["id"]), "--expires-at", "2020-01-01T00:00:00Z",
                      check=False)
    assert "in the past" in one_line_error(late, 65)
    shown = json.loads(daemon.cli("agent", "show", str(rec["id"]), "-o", "json").stdout)
    assert shown["state"] == "active" and shown["expires_at"] is None


def test_apply_takes_durations_and_stays_idempotent(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[[agent]]\nname = "temp"\nowner = "o"\nselectors = ["unix:uid:8"]\n'
                    'expires_at = "30d"\n')
    daemon.cli("agent", "apply", "-f", str(path))
    [agent] = json.loads(daemon.cli("agent", "list", "-o", "json").stdout)
    created = datetime.fromisoformat(agent["created_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(agent["expires_at"].replace("Z", "+00:00"))
    assert (expires - created).total_seconds() == 30 * 86400
    assert "nothing to do" in daemon.cli("agent", "apply", "-f", str(path)).stdout


def test_update_clears_lists_and_takes_every_register_flag(daemon: Daemon) -> None:
    daemon.cli("role", "create", "ops", "--audience", "ops")
    rec = daemon.register("editable", "unix:uid:9", extra=(
        "--role", "ops", "--capability", "a", "--capability", "b", "--dns-name", "x.example",
        "--metadata", "team=blue", "--expires-at", "30d"))
    rid = str(rec["id"])
    daemon.cli("agent", "update", rid, "--role", "", "--clear-capabilities", "--kind",
               "service", "--metadata", "team=red", "--no-expiry")
    shown = json.loads(daemon.cli("agent", "show", rid, "-o", "json").stdout)
    assert shown["roles"] == [] and shown["capabilities"] == []
    assert shown["kind"] == "service" and shown["metadata"] == {"team": "red"}
    assert shown["expires_at"] is None and shown["dns_names"] == ["x.example"]
    daemon.cli("agent", "update", rid, "--clear-dns-names", "--clear-metadata")
    shown = json.loads(daemon.cli("agent", "show", rid, "-o", "json").stdout)
    assert shown["dns_names"] == [] and shown["metadata"] == {} and shown["revision"] == 3
    assert daemon.cli("role", "delete", "ops").returncode == 0  # no longer held


def test_unknown_anomaly_action_is_refused(daemon: Daemon) -> None:
    bogus = daemon.cli("agent", "register", "--name", "a", "--owner", "o", "--selector",
                       "unix:uid:3", "--metadata", "anomaly.action=bogus", check=False)
    assert "alert, suspend, off" in one_line_error(bogus, 64)
    rec = daemon.register("b", "unix:uid:3", extra=("--metadata", "anomaly.action=suspend"))
    later = daemon.cli("agent", "update", str(rec["id"]), "--metadata", "anomaly.action=nap",
                       check=False)
    assert "anomaly.action" in one_line_error(later, 64)


def test_grants_are_refused_when_delegation_is_off(daemon: Daemon) -> None:
    rec = daemon.register("helper", "unix:uid:0")
    off = daemon.cli("delegation", "grant", "--subject", "alice", "--issuer", "https://idp",
                     "--agent", str(rec["id"]), "--scope", "read", check=False)
    assert "delegation is disabled" in one_line_error(off, 65)
    assert json.loads(daemon.cli("delegation", "list", "--all", "-o", "json").stdout) == []
