"""Issue 15 item 5: a container's or a delegated unit's own cgroups cannot pose as host units.

Real processes are placed in real cgroups under the host's cgroup v2 hierarchy: a container's
`system.slice/nginx.service`, an LXC payload's, a delegated subtree's and a sub-cgroup of the
unit itself all ask for the identity of an entry that requires `systemd:id:<unit>`; only the
process in the host's `/system.slice/<unit>` gets it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.daemon import NOBODY, Daemon, nobody_site_packages
from tests.support.units import cgroups, run_in, unique

CLIENT = """
import sys
sys.path.insert(0, sys.argv[2])
import grpc
ch = grpc.insecure_channel("unix:" + sys.argv[1])
call = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
try:
    call(b"\\n\\x01a", metadata=[("workload.spiffe.io", "true")], timeout=20)
    print("ISSUED")
except grpc.RpcError as e:
    print("REFUSED", e.code().name)
"""


def client_file(root: Path) -> Path:
    path = root / "client.py"
    path.write_text(CLIENT)
    path.chmod(0o644)
    return path


def ask(d: Daemon, cgroup: Path, client: Path, uid: int = NOBODY) -> str:
    out = run_in(cgroup, ["/usr/bin/python3", str(client), str(d.socket),
                          str(nobody_site_packages())], uid=uid, env={"PATH": "/usr/bin:/bin"})
    return out.stdout.strip() or out.stderr.strip()


def test_container_and_delegated_cgroups_do_not_get_the_hosts_unit(daemon: Daemon) -> None:
    unit = unique("nginx") + ".service"
    scope, lxc, deleg = unique("machine-web"), unique("c"), unique("podman")
    host = f"/system.slice/{unit}"
    forged = [
        f"/machine.slice/{scope}.scope/payload/system.slice/{unit}",
        f"/lxc.payload.{lxc}/system.slice/{unit}",
        f"/system.slice/{deleg}.service/system.slice/{unit}",
        f"{host}/sub",
    ]
    daemon.register("web", f"systemd:id:{unit}", f"unix:uid:{NOBODY}")
    client = client_file(daemon.root)
    with cgroups(*forged) as cg:  # the unit's sub-cgroup first: the host unit is made too
        for path in forged:
            assert ask(daemon, cg[path], client) == "REFUSED PERMISSION_DENIED", path
        host_dir = cg[forged[-1]].parent
        assert ask(daemon, host_dir, client) == "ISSUED"
    records = json.loads(daemon.cli("audit", "list", "--type", "attestation", "-o", "json").stdout)
    seen = {r["details"]["evidence"]["systemd.cgroup"]: r["details"]["selectors"] for r in records}
    for path in forged:
        assert not any(s.startswith("systemd:id:") for s in seen[path]), path
    assert f"systemd:id:{unit}" in seen[host]
    assert "systemd:slice:system.slice" in seen[host]
