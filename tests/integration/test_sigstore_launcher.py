"""Signed scripts: the trusted-launcher rules (interpreter flags, ExecStart, the unit files
and /proc read through open_trusted), on fake /proc trees and real files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ensign.attestors._files import Refused, open_trusted
from ensign.attestors._launcher import (
    ScriptRefused,
    assigned_names,
    env_file_names,
    exec_start,
    interpreter_kind,
    launched_script,
    parse_service,
    script_of,
)
from tests.support.daemon import NOBODY
from tests.support.units import trusted_tmp


@pytest.mark.parametrize(("argv", "script"), [
    (["/usr/bin/python3", "-I", "/opt/a/agent.py"], "/opt/a/agent.py"),
    (["/usr/bin/python3", "-I", "-s", "-E", "-B", "-P", "-u", "-O", "/a.py", "x", "-c"], "/a.py"),
    (["/usr/bin/python3", "-B", "-I", "/a.py"], "/a.py"),
    (["/usr/bin/python3", "-I"], "no script"),
    (["/usr/bin/python3", "/a.py"], "-I"),  # not isolated: user site, PYTHON* variables
    (["/usr/bin/python3", "-IB", "/a.py"], "-IB"),  # flags only as words of their own
    (["/usr/bin/python3", "-I", "-bW", "/signed.py", "/evil.py"], "-bW"),
    (["/usr/bin/python3", "-I", "-i", "/a.py"], "-i"),
    (["/usr/bin/python3", "-I", "-c", "print(1)"], "-c"),
    (["/usr/bin/python3", "-I", "-m", "agent"], "-m"),
    (["/usr/bin/python3", "-I", "-X", "dev", "/a.py"], "-X"),
    (["/usr/bin/python3", "-I", "agent.py"], "not a plain absolute path"),
    (["/usr/bin/python3", "-I", "/a/../evil/agent.py"], "not a plain absolute path"),
    (["/usr/bin/python3", "-I", "/a//agent.py"], "not a plain absolute path"),
    (["/usr/bin/node", "/srv/agent.js", "--port=1"], "/srv/agent.js"),
    (["/usr/bin/node", "-r", "/evil.js", "/srv/agent.js"], "flags are not allowed"),
    (["/usr/bin/node", "--import", "/evil.mjs", "/srv/agent.js"], "flags are not allowed"),
])
def test_only_allowed_interpreter_flags_and_an_absolute_script(argv: list[str],
                                                               script: str) -> None:
    kind = interpreter_kind(argv[0])
    assert kind in ("python", "node")
    if script.startswith("/"):
        assert script_of(argv, kind) == script
    else:
        with pytest.raises(ScriptRefused) as e:
            script_of(argv, kind)
        assert e.value.rule == "exec-start" and script in str(e.value)


@pytest.mark.parametrize(("text", "why"), [
    ("[Service]\nExecStart=/usr/bin/python3 -I /a.py\nExecStart=/usr/bin/python3 -I /b.py\n",
     "2 ExecStart lines"),
    ("[Service]\nExecStart=-/usr/bin/python3 -I /a.py\n", "prefix"),
    ("[Service]\nExecStart=@/usr/bin/python3 x -I /a.py\n", "prefix"),
    ("[Service]\nExecStart=python3 -I /a.py\n", "relative"),
    ("[Service]\nExecStart=/usr/bin/python3 -I /srv/%i.py\n", "specifiers"),
    ("[Service]\nExecStart=/usr/bin/python3 -I $SCRIPT\n", "variables"),
    ("[Service]\nExecStart=/usr/bin/python3 -I \"/a b.py\"\n", "quotes"),
    ("[Service]\nExecStart=/usr/bin/python3 -I \\\n  /a.py\n", "continuations"),
    ("[Service]\nExecStart=/usr/bin/python3 -I /a.py\n[Service]\nExecStart=\n", "0 ExecStart"),
    ("[Unit]\nExecStart=/usr/bin/python3 -I /a.py\n", "0 ExecStart"),
])
def test_exec_start_must_be_one_plain_command(text: str, why: str) -> None:
    with pytest.raises(ScriptRefused) as e:
        exec_start(parse_service(text))
    assert why in str(e.value)


def test_reset_and_environment_parsing() -> None:
    service = parse_service("[Service]\nExecStart=/x\nExecStart=\n"
                            "ExecStart=/usr/bin/python3 -I /a.py\n"
                            "Environment=\"PYTHONPATH=/home/u/lib\" LANG=C\n")
    assert exec_start(service) == ["/usr/bin/python3", "-I", "/a.py"]
    assert assigned_names(service["Environment"][0]) == ["PYTHONPATH", "LANG"]
    assert env_file_names("# c\nA=1\n\nNODE_OPTIONS=--require /x\n") == ["A", "NODE_OPTIONS"]
    for bad in ("export A=1\n", "A\n", "A=1 \\\n"):
        with pytest.raises(ScriptRefused):
            env_file_names(bad)


@pytest.fixture
def trusted() -> Iterator[Path]:
    d = trusted_tmp()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _walk(trusted: Path, path: Path, cap: int = 1 << 20) -> str:
    root = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        fd, dir_fd, _ = open_trusted(root, str(path), "script", cap)
    except Refused as e:
        return str(e)
    finally:
        os.close(root)
    os.close(fd)
    os.close(dir_fd)
    return "ok"


def test_open_trusted_refuses_what_others_could_change_or_what_blocks(trusted: Path) -> None:
    (trusted / "a").mkdir(mode=0o755)
    ok = trusted / "a" / "agent.py"
    ok.write_text("print(1)\n")
    assert _walk(trusted, ok) == "ok"
    fifo = trusted / "a" / "fifo"
    os.mkfifo(fifo)  # would block an open without O_NONBLOCK: it returns at once instead
    assert "not a regular file" in _walk(trusted, fifo)
    (trusted / "a" / "link.py").symlink_to(ok)
    assert "Too many levels of symbolic links" in _walk(trusted, trusted / "a" / "link.py")
    (trusted / "l").symlink_to(trusted / "a")
    assert "without following links" in _walk(trusted, trusted / "l" / "agent.py")
    assert "over the limit" in _walk(trusted, ok, cap=3)
    os.chown(ok, NOBODY, 0)
    assert "owned by uid 65534" in _walk(trusted, ok)
    os.chown(ok, 0, 0)
    (trusted / "a").chmod(0o775)
    assert "writable by group or others" in _walk(trusted, ok)
    (trusted / "a").chmod(0o1777)  # sticky is not enough: others could add files beside it
    assert "writable by group or others" in _walk(trusted, ok)
    assert "directory /tmp is writable by group or others" in _walk(trusted, Path("/tmp/x.py"))


def _fake_proc(trusted: Path, cgroup: str, argv: list[str], environ: bytes = b"") -> Path:
    proc = trusted / "proc"
    (proc / "7").mkdir(parents=True, exist_ok=True)
    (proc / "7" / "cgroup").write_text(f"0::{cgroup}\n")
    (proc / "7" / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (proc / "7" / "environ").write_bytes(environ)
    return proc


def test_launcher_rules_on_a_fake_proc(trusted: Path) -> None:
    units = trusted / "units"
    units.mkdir()
    script = trusted / "agent.py"
    script.write_text("")
    argv = ["/usr/bin/python3", "-I", str(script)]
    (units / "agent.service").write_text(f"[Service]\nExecStart={' '.join(argv)}\n")
    (units / "tmpl@.service").write_text(f"[Service]\nExecStart={' '.join(argv)}\n")
    py = os.path.realpath("/usr/bin/python3")
    interpreters = {py, os.path.realpath("/usr/bin/node")}

    def rule(cgroup: str, exe: str = py, cmd: list[str] = argv, environ: bytes = b"") -> str:
        proc = _fake_proc(trusted, cgroup, cmd, environ)
        try:
            launch = launched_script(7, exe, [units], interpreters, proc)
        except ScriptRefused as e:
            return e.rule
        return launch.script

    assert rule("/system.slice/agent.service") == str(script)
    assert rule("/system.slice/system-tmpl.slice/tmpl@x.service") == str(script)  # template
    assert rule("/user.slice/user-0.slice/user@0.service/agent.service") == "system-unit"
    assert rule("/system.slice/agent.service/sub") == "system-unit"
    assert rule("/system.slice/other.service") == "unit-file"
    assert rule("/system.slice/agent.service", exe="/usr/bin/node") == "interpreter"
    assert rule("/system.slice/agent.service", cmd=[*argv, "x"]) == "cmdline"
    assert rule("/system.slice/agent.service", cmd=argv[:1] + argv[2:]) == "cmdline"
    assert rule("/system.slice/agent.service", environ=b"A=1\0LD_PRELOAD=/x.so\0") == "environment"
    (units / "agent.service.d").mkdir()
    assert rule("/system.slice/agent.service") == str(script)  # an empty drop-in directory
    (units / "agent.service.d" / "10-x.conf").write_text("[Service]\nEnvironment=A=1\n")
    assert rule("/system.slice/agent.service") == "unit-file"
    (units / "tmpl@.service.d").mkdir()
    (units / "tmpl@.service.d" / "x.conf").write_text("")
    assert rule("/system.slice/system-tmpl.slice/tmpl@x.service") == "unit-file"
