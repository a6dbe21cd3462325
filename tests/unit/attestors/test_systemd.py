"""The systemd attestor's reading of cgroup paths, and that user-manager units cannot pose as
system units."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ensign.attestors.systemd import SystemdAttestor, SystemdConfig, parse_cgroup, unit_selectors
from ensign.daemon.models import Caller


def test_system_unit() -> None:
    assert unit_selectors("/system.slice/agent.service") == ["id:agent.service",
                                                             "slice:system.slice"]


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
    attestor = SystemdAttestor(SystemdConfig())
    result = asyncio.run(attestor.attest(Caller(pid=os.getpid(), uid=0, gid=0, start_ticks=1)))
    # What the kernel says of this process decides which answer is right.
    unified = [line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.startswith("0::")]
    if unified:
        assert result.evidence == {"cgroup": unified[0]}
        assert result.selectors == tuple(unit_selectors(unified[0]))
    else:
        assert (result.evidence, result.selectors) == ({"note": "no cgroup v2 hierarchy"}, ())
