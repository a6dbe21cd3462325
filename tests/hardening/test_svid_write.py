"""Issue 15 item 9: `ensign fetch x509 --write DIR` never leaves the key readable by another user.

Another uid (65534) pre-creates `svid.0.key` in DIR and keeps it open. The key is then written
to a new file that replaces it (the other user's open file stays empty), or DIR is refused
with exit 77 when another user could place or swap files in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import NOBODY, Daemon, make_daemon, run_as

# The other user: creates svid.0.key (0666, its own), keeps it open, and reports what it can
# read through its descriptor and by name once the fetch is done (it waits for "go").
SNOOP = """
import os, sys
path = os.path.join(sys.argv[1], "svid.0.key")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
os.fchmod(fd, 0o666)
print("ready", flush=True)
sys.stdin.readline()
os.lseek(fd, 0, 0)
held = os.read(fd, 1 << 16)
try:
    by_name = open(path, "rb").read()
except OSError as e:
    by_name = e.strerror.encode()
print("held", b"PRIVATE KEY" in held, "by_name", b"PRIVATE KEY" in by_name, flush=True)
"""


@pytest.fixture(scope="module")
def root_agent() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)  # the other user must reach the directories inside
    d = make_daemon(root)
    d.register("writer", "unix:uid:0")
    yield d
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)


def _snoop_and_fetch(d: Daemon, out: Path) -> tuple[str, int, str]:
    """Returns (what the other user could read, the CLI's exit code, its stderr)."""
    snoop = subprocess.Popen(
        ["/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable,
         "-c", SNOOP, str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, user=NOBODY, group=NOBODY,
        extra_groups=[], env={"PATH": "/usr/bin:/bin"})
    assert snoop.stdout is not None and snoop.stdin is not None
    assert snoop.stdout.readline().strip() == "ready"
    result = d.cli("fetch", "x509", "--write", str(out), check=False)
    seen = snoop.communicate("go\n", timeout=30)[0].strip()
    return seen, result.returncode, result.stderr


def _dir(base: Path, name: str, mode: int, owner: int = 0, group: int = 0) -> Path:
    out = base / name
    out.mkdir()
    os.chown(out, owner, group)
    out.chmod(mode)
    return out


def test_a_key_file_another_user_created_is_replaced_not_reused(root_agent: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    # Sticky and the caller's: others may create names in it but not replace the caller's.
    out = _dir(root_agent.root, "sticky-mine", 0o1777)
    seen, code, err = _snoop_and_fetch(root_agent, out)
    assert code == 0, err
    assert seen == "held False by_name False"  # its own file kept nothing; the key is not its
    key = out / "svid.0.key"
    st = key.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    assert b"PRIVATE KEY" in key.read_bytes()
    assert (out / "svid.0.pem").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp left
    denied = run_as(NOBODY, f"open({str(key)!r}, 'rb').read()")
    assert "PermissionError" in denied.stderr


@pytest.mark.parametrize(("name", "mode", "owner", "group", "why"), [
    ("open-to-all", 0o777, 0, 0, "writable by others"),
    ("group-writable", 0o775, 0, NOBODY, "writable by others"),
    ("sticky-but-not-mine", 0o1777, NOBODY, NOBODY, "belongs to uid 65534"),
    ("theirs", 0o755, NOBODY, NOBODY, "belongs to uid 65534"),
])
def test_a_directory_others_could_write_is_refused(root_agent: Daemon, name: str, mode: int,
                                                   owner: int, group: int, why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = _dir(root_agent.root, name, mode, owner, group)
    seen, code, err = _snoop_and_fetch(root_agent, out)
    assert code == 77
    assert why in err and len(err.strip().splitlines()) == 1, err
    assert seen == "held False by_name False"
    assert {p.name for p in out.iterdir()} == {"svid.0.key"}  # only the other user's file
    assert (out / "svid.0.key").stat().st_uid == NOBODY
