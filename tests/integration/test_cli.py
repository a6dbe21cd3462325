"""The CLI as users and scripts meet it: outputs, exit codes, one-line errors, dev mode."""

from __future__ import annotations

import json
import os
import pwd
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jwt as pyjwt
import pytest

from tests.support.cli import one_line_error
from tests.support.daemon import ENSIGN, NOBODY, Daemon, make_daemon
from tests.support.scripts import raw_as

LIST_AGENTS = "/ensign.admin.v1.Admin/ListAgents"


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENSIGN, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('trust_domain = "corp.example"\n[svid]\njwt_ttl = "2m"\n')
    ok = _run("config", "check", "--config", str(good))
    assert ok.returncode == 0 and "corp.example" in ok.stdout
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(os.urandom(256))
    result = _run("config", "check", "--config", str(garbage))
    assert "not valid TOML" in one_line_error(result, 78)
    typo = tmp_path / "typo.toml"
    typo.write_text("[svid]\nx509_tll = \"1h\"\n")
    result = _run("config", "check", "--config", str(typo))
    assert "svid.x509_tll: unknown key" in one_line_error(result, 78)


def test_daemon_refuses_bad_config_with_config_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('trust_domain = "UPPER"\n')
    result = _run("daemon", "--config", str(bad))
    assert "trust_domain" in one_line_error(result, 78)


def test_usage_errors_are_one_line(daemon: Daemon) -> None:
    result = daemon.cli("agent", "register", "--name", "x", check=False)
    assert "--selector" in one_line_error(result, 64)
    result = daemon.cli("agent", "register", "--name", "x", "--selector", "bogus", "--owner", "o",
                        check=False)
    assert "INVALID_ARGUMENT" in one_line_error(result, 64)
    result = daemon.cli("agent", "register", "--name", "x", "--selector", "unix:uid:1",
                        "--owner", "o", "--x509-ttl", "soon", check=False)
    assert "invalid duration" in one_line_error(result, 64)


def test_agent_lifecycle_through_cli(daemon: Daemon) -> None:
    rid = daemon.cli("agent", "register", "--name", "builder", "--selector", "unix:uid:1234",
                     "--owner", "alice@example.org", "--capability", "build").stdout.strip()
    assert rid.startswith("agt_")
    shown = json.loads(daemon.cli("agent", "show", rid, "-o", "json").stdout)
    assert shown["owner"] == "alice@example.org" and shown["revision"] == "1"
    listed = json.loads(daemon.cli("agent", "list", "--owner", "alice@example.org",
                                   "-o", "json").stdout)
    assert [a["id"] for a in listed] == [rid]
    assert json.loads(daemon.cli("agent", "list", "--owner", "bob", "-o", "json").stdout) == []
    daemon.cli("agent", "update", rid, "--selector", "unix:uid:1235", "--x509-ttl", "10m")
    shown = json.loads(daemon.cli("agent", "show", rid, "-o", "json").stdout)
    assert shown["selectors"] == ["unix:uid:1235"] and shown["x509_ttl_seconds"] == "600"
    dup = daemon.cli("agent", "register", "--name", "builder", "--selector", "unix:uid:9",
                     "--owner", "a@b", check=False)
    assert "ALREADY_EXISTS" in one_line_error(dup, 65)
    daemon.cli("agent", "delete", rid)
    gone = daemon.cli("agent", "show", rid, check=False)
    assert "NOT_FOUND" in one_line_error(gone, 66)


def test_fetch_without_identity_and_without_daemon(daemon: Daemon, tmp_path: Path) -> None:
    denied = daemon.cli("fetch", "x509", check=False)
    assert "PERMISSION_DENIED" in one_line_error(denied, 77)
    nosock = _run("fetch", "jwt", "--audience", "a", "--socket", f"unix://{tmp_path}/none.sock")
    assert "no daemon socket" in one_line_error(nosock, 69)
    bad_uri = _run("healthcheck", "--socket", "tcp://127.0.0.1:1")
    assert "tcp://127.0.0.1:1" in one_line_error(bad_uri, 64)


def test_jwt_fetch_and_validate_via_cli(daemon: Daemon) -> None:
    daemon.register("me", "unix:uid:0")
    token = daemon.cli("fetch", "jwt", "--audience", "svc").stdout.strip()
    assert token.count(".") == 2
    ok = daemon.cli("validate", "jwt", "--audience", "svc", "--token", "-", input=token)
    assert ok.stdout.startswith("valid: spiffe://example.org/agent/")
    wrong = daemon.cli("validate", "jwt", "--audience", "other", "--token", token, check=False)
    assert "audience" in one_line_error(wrong, 65)
    bundles = json.loads(daemon.cli("fetch", "bundles", "-o", "json").stdout)
    td = bundles["spiffe://example.org"]
    assert td["x509_authorities"] and all("kid" in k for k in td["jwt_authorities"]["keys"])


def test_admin_socket_mode_and_refusal_of_other_uids(daemon: Daemon) -> None:
    assert oct(daemon.admin_socket.stat().st_mode & 0o777) == "0o600"
    assert oct(daemon.socket.stat().st_mode & 0o777) == "0o666"
    assert oct(daemon.data_dir.stat().st_mode & 0o777) == "0o700"
    ca_state = daemon.data_dir / "ca" / "state.json"
    assert oct(ca_state.stat().st_mode & 0o777) == "0o600"
    assert "PRIVATE KEY" not in daemon.log.read_text()


def _dev_daemon(state: Path, cwd: Path) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """`ensign daemon --dev` as `make run` starts it: the console script."""
    ensign = Path(sys.executable).parent / "ensign"
    proc = subprocess.Popen([str(ensign), "daemon", "--dev", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def _until_fetch_line(lines: queue.Queue[str]) -> list[str]:
    """What the daemon prints, up to the `fetch jwt` command it suggests."""
    out: list[str] = []
    while not out or " fetch jwt " not in out[-1]:
        out.append(lines.get(timeout=60))
    return out


def test_dev_quick_start_as_a_user_types_it(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    (state / "env").write_text("export SPIFFE_ENDPOINT_SOCKET=unix:///nowhere\n")  # a stale one
    proc, lines = _dev_daemon(state, tmp_path)
    try:
        printed = _until_fetch_line(lines)
        exports = [f"export SPIFFE_ENDPOINT_SOCKET=unix://{state}/agent.sock",
                   f"export ENSIGN_ADMIN_SOCKET=unix://{state}/admin.sock"]
        assert printed[:2] == exports
        assert (state / "env").read_text() == "\n".join(exports) + "\n"
        register, fetch = printed[-2], printed[-1]
        assert f" agent register --name {pwd.getpwuid(os.getuid()).pw_name} " in register
        assert register.endswith(f"--selector unix:uid:{os.getuid()} --role demo")
        # typed at once, the moment the lines appear: source the env file, run both commands
        out = subprocess.run(["bash", "-c", f". {state}/env && {register} && {fetch}"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert out.returncode == 0, out.stderr
        agent_id, token = out.stdout.split()
        claims = pyjwt.decode(token, options={"verify_signature": False})
        assert (claims["aud"], claims["roles"], claims["agent_id"]) == (["demo"], ["demo"],
                                                                        agent_id)
        # anything else is still refused: the demo role allows demo audiences only
        other = subprocess.run(["bash", "-c", f". {state}/env && {fetch.replace('demo', 'x')}"],
                               capture_output=True, text=True, timeout=60)
        assert other.returncode == 77 and "'x'" in other.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    proc, lines = _dev_daemon(state, tmp_path)  # the next `make run`: already registered
    try:
        printed = _until_fetch_line(lines)
        assert printed[-2] == f"# you are registered as {agent_id} with the demo role; try:"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize("args", [["--help"], ["agent", "--help"], ["fetch", "x509", "--help"]])
def test_help(args: list[str]) -> None:
    result = _run(*args)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_module_entry_point_matches_console_script() -> None:
    script = Path(sys.executable).parent / "ensign"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "fetch" in result.stdout


def test_admin_group_members_may_use_the_admin_socket(short_tmp: Path) -> None:
    import grp

    if os.geteuid() != 0:
        pytest.skip("needs root to create a group")
    name = f"ensadm{os.getpid() % 10000}"
    subprocess.run(["groupadd", "-f", name], check=True)
    try:
        gid = grp.getgrnam(name).gr_gid
        d = make_daemon(short_tmp, f'admin_group = "{name}"\n')  # a top-level key
        st = d.admin_socket.stat()
        assert oct(st.st_mode & 0o777) == "0o660" and st.st_gid == gid
        member = raw_as(NOBODY, d.admin_socket, LIST_AGENTS, mode="none", extra_groups=(gid,))
        assert member == "OK", member  # an empty list: no bytes
        stranger = raw_as(NOBODY, d.admin_socket, LIST_AGENTS, mode="none")
        assert stranger.startswith("STATUS UNAVAILABLE"), stranger  # cannot even connect (0660)
        d.stop()
    finally:
        subprocess.run(["groupdel", name], capture_output=True)
