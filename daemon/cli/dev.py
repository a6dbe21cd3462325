"""`ensign daemon --dev`: a working demo the moment the daemon says it serves.

Once both sockets serve (never before: a user types the next command at once), the daemon
writes DIR/env, prints the `export` lines, and prints the one command that registers the
current user with the `demo` role, which dev mode creates: it allows JWT-SVIDs for the
audiences `demo` and `https://demo.example.org/*` only (example.org is reserved: no real
service), for at most 5 minutes, and no delegation scopes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import sys
from pathlib import Path

from ensign.daemon.config import Config
from ensign.daemon.registry import ListFilter, Registry, Role, RoleBook

DEMO_ROLE = Role(name="demo", audiences=("demo", "https://demo.example.org/*"), max_ttl=300)


def forget_env(state_dir: Path) -> None:
    """An env file left by an earlier run must not be sourced before the sockets serve."""
    with contextlib.suppress(FileNotFoundError):
        (state_dir / "env").unlink()


async def ready(cfg: Config, state_dir: Path, roles: RoleBook, registry: Registry) -> None:
    """Called once both sockets serve."""
    if "demo" not in roles.all:
        await roles.create(DEMO_ROLE, "ensign")  # before the command naming it is printed
    _announce(cfg, state_dir, registry)


def _announce(cfg: Config, state_dir: Path, registry: Registry) -> None:
    """Write DIR/env and print the lines to type next."""
    lines = [
        f"export SPIFFE_ENDPOINT_SOCKET=unix://{cfg.socket_path}",
        f"export ENSIGN_ADMIN_SOCKET=unix://{cfg.admin_socket_path}",
    ]
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "env").write_text("\n".join(lines) + "\n")
    uid = os.getuid()
    prog = sys.argv[0] if Path(sys.argv[0]).name == "ensign" else "ensign"
    mine = registry.entries(ListFilter(state="active", role="demo", selector=f"unix:uid:{uid}"))
    out = [*lines, f"# (also in {state_dir.resolve() / 'env'}: `. {state_dir / 'env'}`)"]
    if mine:
        out.append(f"# you are registered as {mine[0].id} with the demo role; try:")
    else:
        out.append("# register yourself with the demo role, then fetch a token:")
        out.append(shlex.join([prog, "agent", "register", "--name", _user(uid), "--owner",
                               _user(uid), "--selector", f"unix:uid:{uid}", "--role", "demo"]))
    out.append(shlex.join([prog, "fetch", "jwt", "--audience", "demo"]))
    print("\n".join(out), flush=True)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"
