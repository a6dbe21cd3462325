"""Fixtures shared by every suite; the harness itself is in tests/support/."""

from __future__ import annotations

import os

# The suite forks helpers (run_as, extra_groups) from processes whose grpcio channels have
# threads; grpcio's fork handlers then run in the child before exec and can abort it
# ("pthread_create failed", seen once under xdist). Nothing here uses a channel across fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.daemon import Daemon, make_daemon


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short, world-traversable temp dir: socket paths are limited to 107 bytes, and
    cross-uid clients must reach the socket."""
    d = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Daemon]:
    d = make_daemon(short_tmp)
    yield d
    if d.alive():
        d.stop()


@pytest.fixture(scope="module")
def shared_daemon() -> Iterator[Daemon]:
    """One daemon for a module's read-mostly tests."""
    root = Path(tempfile.mkdtemp(prefix="ens", dir="/tmp"))
    root.chmod(0o755)
    d = make_daemon(root)
    yield d
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[postgres.Cluster]:
    """One real PostgreSQL for the whole run (TLS, client certificates); each fleet test module
    makes its own database in it."""
    why = postgres.available()
    if why is not None:
        pytest.skip(why)
    cluster = postgres.start_cluster()
    yield cluster
    cluster.destroy()
