"""The CLI as users and scripts meet it: outputs, exit codes, one-line errors, dev mode."""

from __future__ import annotations

import json
import os
import pwd
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import jwt as pyjwt
import pytest

from tests.support.cli import one_line_error
from tests.support.daemon import ENSIGN, NOBODY, Daemon, make_daemon
from tests.support.net import free_port
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
    assert shown["owner"] == "alice@example.org" and shown["revision"] == 1
    listed = json.loads(daemon.cli("agent", "list", "--owner", "alice@example.org",
                                   "-o", "json").stdout)
    assert [a["id"] for a in listed] == [rid]
    assert json.loads(daemon.cli("agent", "list", "--owner", "bob", "-o", "json").stdout) == []
    daemon.cli("agent", "update", rid, "--selector", "unix:uid:1235", "--x509-ttl", "10m")
    shown = json.loads(daemon.cli("agent", "show", rid, "-o", "json").stdout)
    assert shown["selectors"] == ["unix:uid:1235"] and shown["x509_ttl_seconds"] == 600
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
    # JSON numbers are numbers: exp and iat as the token holds them, not floats
    doc = json.loads(daemon.cli("validate", "jwt", "--audience", "svc", "--token", token,
                                "-o", "json").stdout)
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert type(doc["claims"]["exp"]) is int and doc["claims"]["exp"] == claims["exp"]
    assert type(doc["claims"]["iat"]) is int and doc["claims"]["iat"] == claims["iat"]
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


# -- one exit-code table, one output convention (issue 23) ----------------------------------


_ALL_ERROR_CLASSES = """
import importlib, json, pkgutil
import ensign.attestors, ensign.daemon
from ensign.daemon.errors import EnsignError
for pkg in (ensign.daemon, ensign.attestors):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
def classes(c):
    return [c, *(s for sub in c.__subclasses__() for s in classes(sub))]
print(json.dumps({c.__name__: c.exit_code for c in classes(EnsignError)}))
"""


def test_the_readme_exit_code_table_is_the_one_the_cli_uses() -> None:
    from ensign.daemon.errors import EXIT_CODES
    from tests.support.daemon import REPO

    commands = (REPO / "README.md").read_text().split("## Commands", 1)[1]
    table = commands.split("| command |", 1)[0]
    rows = {int(code): text for code, text in re.findall(r"^\| (\d+) \| (.+) \|$", table, re.M)}
    assert rows == EXIT_CODES

    # Every error class of every module (the CLI's, the daemon's, the attestors'), so a class
    # added anywhere with a code the table does not explain fails here. In a child process:
    # importing everything here would load descriptors other tests load their own way.
    out = subprocess.run([sys.executable, "-c", _ALL_ERROR_CLASSES], capture_output=True,
                         text=True, check=True, timeout=120)
    codes: dict[str, int] = json.loads(out.stdout)
    assert set(codes.values()) <= set(EXIT_CODES), codes
    assert {65, 66, 70, 74, 75} <= set(codes.values())
    assert {name: codes[name] for name in (
        "RequestTooLarge", "AudienceMismatch", "HolderInactive", "NoTpm", "TpmSealError",
        "TpmUnavailable", "WrongSocket", "InvalidData", "ArtifactInvalid", "AuditInvalid")} == {
        "RequestTooLarge": 75, "AudienceMismatch": 65, "HolderInactive": 65, "NoTpm": 69,
        "TpmSealError": 78, "TpmUnavailable": 69, "WrongSocket": 64, "InvalidData": 65,
        "ArtifactInvalid": 65, "AuditInvalid": 65}


def test_a_command_at_the_wrong_socket_says_which_socket_it_needs(daemon: Daemon) -> None:
    admin_there = daemon.cli("agent", "list", "--admin-socket", daemon.endpoint, check=False)
    line = one_line_error(admin_there, 64)
    assert "does not serve the admin API" in line and "set --admin-socket" in line
    workload_there = daemon.cli("fetch", "x509", "--socket", f"unix://{daemon.admin_socket}",
                                check=False)
    line = one_line_error(workload_there, 64)
    assert "does not serve the Workload API" in line and "set --socket" in line
    nothing = daemon.cli("status", "--admin-socket", f"unix://{daemon.root}/gone.sock",
                         check=False)
    assert "no daemon socket" in one_line_error(nothing, 69)
    assert "--admin-socket" in nothing.stderr
    assert daemon.cli("healthcheck").stdout.strip() == "healthy"


def test_unreadable_inputs_exit_66_and_bad_content_65(daemon: Daemon, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    for argv in (["agent", "apply", "-f", missing],
                 ["token", "exchange", "--subject-token", missing, "--audience", "a"],
                 ["tpm", "verify-evidence", missing, "--nonce", "00" * 16, "--ak-pub", missing,
                  "--policy", missing]):
        result = daemon.cli(*argv, check=False)
        assert missing in one_line_error(result, 66), argv
    bad = tmp_path / "bad.toml"
    for text in ("[[agent]]\nname = 1\n", "not = = toml", "[[agent]]\nname = \"x\"\n"
                 "owner = \"o\"\nselectors = [\"unix:uid:1\"]\nexpires_at = \"soon\"\n"):
        bad.write_text(text)
        result = daemon.cli("agent", "apply", "-f", str(bad), check=False)
        assert str(bad) in one_line_error(result, 65), text
    assert json.loads(daemon.cli("agent", "list", "-o", "json").stdout) == []


def test_json_has_rfc3339_times_and_numbers_and_text_tables_fit(daemon: Daemon) -> None:
    from datetime import datetime

    daemon.cli("role", "create", "reader", "--audience", "a", "--max-ttl", "30d")
    rid = daemon.cli("agent", "register", "--name", "an-agent-with-a-name-wider-than-twenty",
                     "--selector", "unix:uid:4242", "--owner", "o", "--role", "reader",
                     "--x509-ttl", "30d", "--expires-at", "2099-01-01T00:00:00Z",
                     "--metadata", "team=x").stdout.strip()
    shown = json.loads(daemon.cli("agent", "show", rid, "-o", "json").stdout)
    assert shown["x509_ttl_seconds"] == 2592000 and shown["jwt_ttl_seconds"] == 0
    assert shown["revision"] == 1 and shown["created_by"] == 0
    assert shown["expires_at"] == "2099-01-01T00:00:00Z"
    assert datetime.fromisoformat(shown["created_at"].replace("Z", "+00:00")).year >= 2025
    assert [h["to_state"] for h in shown["history"]] == ["active"]
    assert isinstance(shown["history"][0]["at"], str) and shown["history"][0]["at"].endswith("Z")
    [listed] = json.loads(daemon.cli("agent", "list", "-o", "json").stdout)
    assert "history" not in listed and listed["x509_ttl_seconds"] == 2592000
    status = json.loads(daemon.cli("status", "-o", "json").stdout)
    assert status["entries"] == 1 and status["roles"] == 1
    assert status["ca_not_after"].endswith("Z") and status["started_at"].endswith("Z")
    assert json.loads(daemon.cli("log-level", "-o", "json").stdout) == {"level": "debug"}

    table = daemon.cli("agent", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "OWNER", "SPIFFE", "ID"]
    assert table[0].index("STATE") == table[1].index("active")  # the long name fits
    assert re.search(r"^x509_ttl +30d$", daemon.cli("agent", "show", rid).stdout, re.M)
    roles = daemon.cli("role", "list").stdout.splitlines()
    assert roles[0].split()[:3] == ["NAME", "MAX", "TTL"] and " 30d " in roles[1]
    audit = daemon.cli("audit", "list", "--type", "registry.change").stdout.splitlines()
    assert audit[0].split() == ["TIME", "SEQ", "TYPE", "RESULT", "WHO", "DETAIL"]
    assert audit[1].index("registry.change") == audit[0].index("TYPE")
    ocsf = daemon.cli("audit", "export", "-o", "ocsf", "--type", "registry.change").stdout
    assert [json.loads(line)["class_uid"] for line in ocsf.splitlines()] == [3004]
    version = _run("--version")
    assert version.returncode == 0 and version.stdout.startswith("ensign ")


def test_timeouts_state_dir_and_selector_forms_are_checked(daemon: Daemon, tmp_path: Path) -> None:
    zero = daemon.cli("fetch", "x509", "--timeout", "0", check=False)
    assert "above 0" in one_line_error(zero, 64)
    assert daemon.cli("watch", "--timeout", "5", check=False).returncode == 64  # not offered
    state = tmp_path / "state"
    stray = _run("daemon", "--config", str(daemon.config_path), "--state-dir", str(state))
    assert "--dev" in one_line_error(stray, 64)
    assert not state.exists()
    short = daemon.cli("agent", "register", "--name", "x", "--owner", "o", "--selector",
                       "unix:uid", check=False)
    assert "type:key:value" in one_line_error(short, 64)


def test_request_csr_makes_a_private_data_dir_and_prints_the_csr(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    cfg = tmp_path / "ensign.toml"
    cfg.write_text(f'data_dir = "{data}"\n')
    out = _run("ca", "request-csr", "--config", str(cfg))
    assert out.returncode == 0 and out.stdout.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert oct(data.stat().st_mode & 0o777) == "0o700"


def test_debug_logs_leave_out_http2_internals(daemon: Daemon) -> None:
    daemon.register("chatty", "unix:uid:0")
    daemon.cli("fetch", "x509")
    loggers = {json.loads(line).get("logger", "") for line in daemon.log.read_text().splitlines()
               if line.startswith("{")}
    assert any(name.startswith("ensign.") for name in loggers)
    assert not {n for n in loggers if n.split(".")[0] in ("h2", "hpack")}, loggers


def test_a_failing_attestor_fails_config_check_and_health(short_tmp: Path) -> None:
    from tests.support.daemon import make_daemon

    missing = short_tmp / "no-such-root.json"
    section = f'[attestors.sigstore]\nenabled = true\ntrusted_root = "{missing}"\n'
    cfg = short_tmp / "check.toml"
    cfg.write_text(section)
    check = _run("config", "check", "--config", str(cfg))
    line = one_line_error(check, 78)
    assert "attestors.sigstore.trusted_root" in line and str(missing) in line
    port = free_port()
    d = make_daemon(short_tmp, f'[metrics]\nlisten = "127.0.0.1:{port}"\n' + section)
    try:
        health = d.cli("healthcheck", check=False)
        assert health.returncode == 1
        assert "attestor sigstore failing: attestors.sigstore.trusted_root" in health.stdout
        status = json.loads(d.cli("status", "-o", "json").stdout)
        assert status["attestor_state"]["sigstore"].startswith("failing: trusted_root")
        assert "sigstore" in status["problem"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                         timeout=10).read().decode()
        assert re.search(r"^ensign_attestors_failing 1\.0$", metrics, re.M), metrics
        assert re.search(r"^ensign_serving 0\.0$", metrics, re.M), metrics
        # and a warning in the log naming the attestor and why (the first at once, then
        # one a minute): waited for, since the maintenance loop starts after the sockets
        deadline = time.monotonic() + 60
        warned: list[dict[str, str]] = []
        while not warned and time.monotonic() < deadline:
            warned = [r for r in map(json.loads, filter(
                lambda line: line.startswith("{"), d.log.read_text().splitlines()))
                if r.get("msg") == "attestor failing: callers get no selectors from it"]
            time.sleep(0.1)
        assert warned and warned[0]["attestor"] == "sigstore", d.log.read_text()[-2000:]
        assert str(missing) in warned[0]["reason"]
    finally:
        d.stop()


_WARNS_FROM_A_LIBRARY = """
import sys, warnings
import grpclib.client

# A library that warns while the command runs, as cryptography and others do: a
# DeprecationWarning, and a deprecation notice that is a UserWarning (cryptography's).
_init = grpclib.client.Channel.__init__
def init(self, *args, **kwargs):
    warnings.warn("Channel option x is deprecated", DeprecationWarning, stacklevel=1)
    warnings.warn("this call is deprecated, use y", UserWarning, stacklevel=1)
    _init(self, *args, **kwargs)
grpclib.client.Channel.__init__ = init
from ensign.daemon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_library_deprecation_warnings_stay_off_the_terminal(daemon: Daemon) -> None:
    out = subprocess.run([sys.executable, "-W", "default", "-c", _WARNS_FROM_A_LIBRARY,
                          "status", "--admin-socket", str(daemon.admin_socket)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "serving" in out.stdout, out.stderr
    assert out.stderr == ""
