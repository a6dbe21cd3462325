"""Adversarial: executables and Sigstore bundles swapped or edited after attestation, and
executables named through symlinks. Each must be refused and audited."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, make_daemon, tmp_root
from tests.support.exe import copy_exe, run_exe, tampered
from tests.support.sigstore import GHA, PrivateSigstore

IDENTITY = "https://github.com/acme/agent/.github/workflows/release.yml@refs/tags/v1.2.3"
OTHER = "https://github.com/mallory/agent/.github/workflows/release.yml@refs/tags/v6.6.6"


@pytest.fixture(scope="module")
def fulcio() -> PrivateSigstore:
    return PrivateSigstore()


@pytest.fixture(scope="module")
def sig_daemon(fulcio: PrivateSigstore) -> Iterator[Daemon]:
    """A Sigstore-enabled daemon with an entry that needs IDENTITY's signature."""
    root = tmp_root()
    tr = root / "trusted_root.json"
    tr.write_text(json.dumps(fulcio.trusted_root()))
    (root / "bundles").mkdir()
    d = make_daemon(root, f'[attestors.sigstore]\nenabled = true\ntrusted_root = "{tr}"\n'
                          f'bundle_dirs = ["{root / "bundles"}"]\n')
    d.register("signed-agent", "unix:uid:0", f"sigstore:identity:{IDENTITY}",
               f"sigstore:issuer:{GHA}")
    yield d
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def signed(sig_daemon: Daemon, fulcio: PrivateSigstore) -> tuple[Daemon, Path, bytes]:
    """A signed build of its own, already attested once (ISSUED)."""
    bins = Path(tempfile.mkdtemp(prefix="bin", dir=sig_daemon.root))
    bins.chmod(0o755)
    exe = copy_exe(bins / "agent")
    data = exe.read_bytes()
    (bins / "agent.sigstore.json").write_text(json.dumps(fulcio.sign(data, IDENTITY)))
    assert run_exe(exe, sig_daemon) == "ISSUED"
    return sig_daemon, exe, data


def _denials(d: Daemon) -> list[dict[str, Any]]:
    return d.audit("--type", "request.denied")


def _sigstore_failures(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in d.audit("--type", "attestation")
            if r["details"]["evidence"].get("sigstore.failed_check")
            or r["details"]["evidence"].get("sigstore.error")]


def test_executable_replaced_after_attestation(signed: tuple[Daemon, Path, bytes]) -> None:
    d, exe, data = signed
    denied = len(_denials(d))
    swap = exe.with_name("swap")
    swap.write_bytes(tampered(data))
    swap.chmod(0o755)
    os.replace(swap, exe)  # a new file at the attested path, the old bundle beside it
    assert run_exe(exe, d) == "REFUSED PERMISSION_DENIED"
    failed = _sigstore_failures(d)
    assert failed[-1]["details"]["evidence"]["sigstore.failed_check"] == "artifact-digest"
    assert len(_denials(d)) == denied + 1


def test_executable_edited_in_place_with_mtime_restored(
    signed: tuple[Daemon, Path, bytes],
) -> None:
    d, exe, data = signed
    failures = len(_sigstore_failures(d))
    st = exe.stat()
    with exe.open("r+b") as f:  # same inode, same size, same mtime: only ctime moves
        f.seek(len(data) - 1)
        f.write(bytes([data[-1] ^ 0x01]))
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_exe(exe, d) == "REFUSED PERMISSION_DENIED"
    failed = _sigstore_failures(d)
    assert len(failed) == failures + 1
    assert failed[-1]["details"]["evidence"]["sigstore.failed_check"] == "artifact-digest"


def test_bundle_replaced_or_removed_after_attestation(
    signed: tuple[Daemon, Path, bytes], fulcio: PrivateSigstore,
) -> None:
    d, exe, data = signed
    denied = len(_denials(d))
    bundle = exe.with_name("agent.sigstore.json")
    bundle.write_text(json.dumps(fulcio.sign(data, OTHER)))  # valid, but someone else's
    assert run_exe(exe, d) == "REFUSED PERMISSION_DENIED"
    bundle.unlink()
    assert run_exe(exe, d) == "REFUSED PERMISSION_DENIED"
    evidence = [r["details"]["evidence"] for r in d.audit("--type", "attestation")]
    assert evidence[-2].get("sigstore.signer") == OTHER
    assert "no Sigstore bundle" in evidence[-1].get("sigstore.error", "")
    assert len(_denials(d)) == denied + 2


def test_symlinked_executable_is_known_by_its_real_path(short_tmp: Path) -> None:
    d = make_daemon(short_tmp)
    try:
        bins = short_tmp / "bin"
        bins.mkdir(mode=0o755)
        real = copy_exe(bins / "real-agent")
        link = bins / "trusted-agent"
        link.symlink_to(real)
        # An entry for the link's path: a caller cannot pick its path by naming a symlink.
        d.register("by-link", "unix:uid:0", f"unix:path:{link}")
        assert run_exe(link, d) == "REFUSED PERMISSION_DENIED"
        assert str(real) in json.dumps(_denials(d)[-1])
        d.register("by-real-path", "unix:uid:0", f"unix:path:{real}")
        assert run_exe(link, d) == "ISSUED"
    finally:
        d.stop()
