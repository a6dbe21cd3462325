"""Daemons shared by the tests of one hardening module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.daemon import Daemon, make_daemon, tmp_root
from tests.support.idp import CAL, Idp


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Daemon, dict[str, Any]]]:
    """A daemon where root (this test process) holds an identity and nobody holds none."""
    root = tmp_root()
    d = make_daemon(root)
    root_entry = d.register("root-agent", "unix:uid:0")
    yield d, root_entry
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def idp() -> Idp:
    return Idp()


@pytest.fixture(scope="module")
def fuzzed(idp: Idp) -> Iterator[Daemon]:
    """One daemon with delegation on and an identity (with a delegating role) for this test
    process."""
    root = tmp_root()
    d = make_daemon(root, idp.config(root))
    d.cli("role", "create", "fuzz", "--audience", f"{CAL}/*",
          "--scope", "calendar.read", "--may-act-for-users", "--may-redelegate")
    d.register("fuzz-me", f"unix:uid:{os.getuid()}", extra=("--role", "fuzz"))
    yield d
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def admin_target() -> Iterator[Daemon]:
    """A daemon of its own for admin fuzzing (random registrations, applies and prunes)."""
    root = tmp_root()
    d = make_daemon(root)
    yield d
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)
