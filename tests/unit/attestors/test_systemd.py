"""The systemd attestor's reading of cgroup paths: user-manager units, containers and delegated
subtrees cannot pose as system units."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ensign.attestors.systemd import (
    SystemdAttestor,
    SystemdConfig,
    parse_cgroup,
    system_unit,
    unit_selectors,
)
from ensign.daemon.models import Attestation, Caller


def test_system_unit() -> None:
    assert unit_selectors("/system.slice/agent.service") == ["id:agent.service",
                                                             "slice:system.slice"]


def test_nested_system_slices_and_scopes() -> None:
    path = "/system.slice/system-getty.slice/getty@tty1.service"
    assert unit_selectors(path) == ["id:getty@tty1.service", "slice:system-getty.slice"]
    assert unit_selectors("/machine.slice/machine-web.scope") == [
        "id:machine-web.scope", "slice:machine.slice"]
    assert unit_selectors("/init.scope") == ["id:init.scope"]
    escaped = ("/system.slice/system-systemd\\x2dfsck.slice/"
               "systemd-fsck@dev-disk-by\\x2dlabel.service")
    assert system_unit(escaped) == ("systemd-fsck@dev-disk-by\\x2dlabel.service",
                                    "system-systemd\\x2dfsck.slice")


@pytest.mark.parametrize("path", [
    # the three: a container's own systemd, an LXC payload, a delegated subtree
    "/machine.slice/machine-web.scope/payload/system.slice/nginx.service",
    "/lxc.payload.c1/system.slice/nginx.service",
    "/system.slice/podman.service/system.slice/nginx.service",
    # below a unit (only a unit with Delegate= can make these): the unit names them
    "/system.slice/nginx.service/sub",
    "/system.slice/nginx.service/nginx.service",
    # slices that are not nested by name, or not slices, or the user's
    "/system.slice/other-x.slice/nginx.service",
    "/system-x.slice/nginx.service",
    "/docker/0123abcd/system.slice/nginx.service",
    "/user.slice/nginx.service",
    "/user.slice/user-1000.slice/nginx.service",
    "/user.slice/user-1000.slice/session-3.scope",
    "/-.slice/nginx.service",
    # names systemd would never give a unit
    "/system.slice/ngi nx.service",
    "/system.slice/nginx\udcff.service",
    "/system.slice/nginx",
    "system.slice/nginx.service",
    "/",
    "",
])
def test_no_system_unit_outside_the_hosts_system_slices(path: str) -> None:
    assert not any(s.startswith(("id:", "slice:")) for s in unit_selectors(path)), path
    assert system_unit(path) is None


def test_user_manager_must_be_the_hosts() -> None:
    forged = ("/machine.slice/machine-web.scope/payload/user.slice/user-0.slice/user@0.service/"
              "a.service")
    assert unit_selectors(forged) == []
    mismatched = "/user.slice/user-1000.slice/user@0.service/app.slice/a.service"
    assert unit_selectors(mismatched) == []
    raw = "/user.slice/user-1000.slice/user@1000.service/app.slice/a\udcff\\.service"
    assert unit_selectors(raw) == ["user_id:a\\xff\\\\.service", "user_manager:1000"]


def test_user_units_are_kept_apart() -> None:
    path = "/user.slice/user-1000.slice/user@1000.service/app.slice/agent.service"
    assert unit_selectors(path) == ["user_id:agent.service", "user_manager:1000"]
    assert not any(s.startswith("id:") for s in unit_selectors(path))


def test_no_unit() -> None:
    assert unit_selectors("/") == []
    assert parse_cgroup("1:cpu:/\n0::/system.slice/x.service\n") == "/system.slice/x.service"
    assert parse_cgroup("1:cpu:/\n") is None


def test_reads_a_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("0::/system.slice/builder.service\n")
    attestor = SystemdAttestor(SystemdConfig(), proc_root=tmp_path)
    result = asyncio.run(attestor.attest(Caller(pid=42, uid=0, gid=0, start_ticks=1)))
    assert "id:builder.service" in result.selectors


def test_reads_this_process() -> None:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v2 = [line[3:] for line in lines if line.startswith("0::")]
    attestor = SystemdAttestor(SystemdConfig())
    result = asyncio.run(attestor.attest(Caller(pid=os.getpid(), uid=0, gid=0, start_ticks=1)))
    if not v2:
        assert result == Attestation(evidence={"note": "no cgroup v2 hierarchy"})
        return
    assert result.evidence == {"cgroup": v2[0]}
    parts = v2[0].split("/")
    if parts[-1].endswith(".service") and all(p.endswith(".slice") for p in parts[1:-1]):
        assert result.selectors[0] == f"id:{parts[-1]}"  # e.g. CI running in a system unit
    else:
        assert result.selectors == ()  # e.g. here: at "/" or in a container's cgroup


def test_cgroup_names_that_are_not_utf8_are_escaped(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_bytes(
        b"0::/user.slice/user-5.slice/user@5.service/p\xff.service\n")
    attestor = SystemdAttestor(SystemdConfig(), proc_root=tmp_path)
    result = asyncio.run(attestor.attest(Caller(pid=7, uid=5, gid=5, start_ticks=1)))
    assert result.evidence == {"cgroup": "/user.slice/user-5.slice/user@5.service/p\\xff.service"}
    assert result.selectors == ("user_id:p\\xff.service", "user_manager:5")
