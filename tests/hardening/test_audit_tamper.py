"""Adversarial: the audit trail edited behind the daemon's back (a segment edited, deleted,
reordered, the newest dropped). `audit verify` names it, and a restart does not launder it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ensign.proto import workload_pb2
from tests.support.clients import call
from tests.support.daemon import ENSIGN, Daemon, make_daemon, tmp_root


@pytest.fixture(scope="module")
def segmented() -> Iterator[Path]:
    """A stopped daemon's data dir whose audit log spans several segments."""
    root = tmp_root()
    d = make_daemon(root, '[audit]\nsegment_size = "4KiB"\ncheckpoint_every = 5\n')
    d.register("logger", "unix:uid:0")
    for i in range(40):
        call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
             workload_pb2.JWTSVIDRequest(audience=[f"aud{i}"]).SerializeToString())
    assert d.stop() == 0
    assert len(list((d.data_dir / "audit").glob("segment-*.jsonl"))) >= 4
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _edit(audit_dir: Path) -> None:
    seg = sorted(audit_dir.glob("segment-*.jsonl"))[1]
    lines = seg.read_bytes().splitlines(keepends=True)
    edited = lines[2].replace(b'"result":"success"', b'"result":"failure"')
    assert edited != lines[2]  # the tampering really changed a record
    lines[2] = edited
    seg.write_bytes(b"".join(lines))


def _delete(audit_dir: Path) -> None:
    sorted(audit_dir.glob("segment-*.jsonl"))[1].unlink()


def _reorder(audit_dir: Path) -> None:
    one, two = sorted(audit_dir.glob("segment-*.jsonl"))[1:3]
    tmp = one.with_suffix(".tmp")
    one.rename(tmp)
    two.rename(one)
    tmp.rename(two)


def _drop_newest(audit_dir: Path) -> None:
    sorted(audit_dir.glob("segment-*.jsonl"))[-1].unlink()


@pytest.mark.parametrize("tamper", [_edit, _delete, _reorder, _drop_newest],
                         ids=["edited", "deleted", "reordered", "newest-deleted"])
def test_audit_segments_tampered_are_named_and_stay_named_after_restart(
    segmented: Path, short_tmp: Path, tamper: Callable[[Path], None],
) -> None:
    root = short_tmp
    shutil.copytree(segmented / "data", root / "data")
    tamper(root / "data" / "audit")
    verify = [*ENSIGN, "audit", "verify", "--data-dir", str(root / "data")]
    out = subprocess.run(verify, capture_output=True, text=True)
    assert out.returncode == 65, out.stdout + out.stderr
    assert "audit verification failed" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # A daemon started on the edited log does not launder it: new records and checkpoints are
    # appended, and the tampering is still reported afterwards.
    d = Daemon(root=root)
    try:
        d.start()
    except RuntimeError:
        return  # refusing to start on a broken log is also a refusal
    try:
        call(d.socket, "/SpiffeWorkloadAPI/FetchJWTSVID", b"\n\x01z")
    finally:
        d.stop()
    again = subprocess.run(verify, capture_output=True, text=True)
    assert again.returncode == 65, again.stdout + again.stderr
