"""Registry fields the HTTPS endpoint and federation use: an entry's federated trust domains
and a role's right to introspect tokens, through the CLI, the apply file and a restart."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.daemon import Daemon


def test_federates_with_and_may_introspect_round_trip(daemon: Daemon, tmp_path: Path) -> None:
    daemon.cli("role", "create", "checker", "--audience", "https://rs.example.org",
               "--may-introspect")
    agent = daemon.register("fed", "unix:uid:4242", extra=(
        "--federates-with", "partner.example", "--federates-with", "other.example",
        "--role", "checker"))
    assert agent["federates_with"] == ["other.example", "partner.example"]
    role = json.loads(daemon.cli("role", "show", "checker", "-o", "json").stdout)
    assert role["may_introspect"] is True
    bad = daemon.cli("agent", "update", str(agent["id"]), "--federates-with", "example.org",
                     check=False)
    assert bad.returncode == 64 and "own trust domain" in bad.stderr
    bad = daemon.cli("agent", "update", str(agent["id"]), "--federates-with", "Not A TD",
                     check=False)
    assert bad.returncode == 64 and "federates_with" in bad.stderr
    daemon.stop()
    daemon.start()  # kept in the registry
    shown = json.loads(daemon.cli("agent", "show", str(agent["id"]), "-o", "json").stdout)
    assert shown["federates_with"] == ["other.example", "partner.example"]
    (tmp_path / "agents.toml").write_text(
        '[[role]]\nname = "checker"\naudiences = ["https://rs.example.org"]\n'
        'may_introspect = false\n'
        '[[agent]]\nname = "fed"\nowner = "tests@example.org"\nselectors = ["unix:uid:4242"]\n'
        'roles = ["checker"]\nfederates_with = ["partner.example"]\n')
    plan = daemon.cli("agent", "apply", "-f", str(tmp_path / "agents.toml"))
    assert "federates_with" in plan.stdout and "role_update" in plan.stdout
    shown = json.loads(daemon.cli("agent", "show", str(agent["id"]), "-o", "json").stdout)
    assert shown["federates_with"] == ["partner.example"]
    role = json.loads(daemon.cli("role", "show", "checker", "-o", "json").stdout)
    assert role["may_introspect"] is False
