"""swtpm for the TPM tests: a TPM manufactured once per session, copied for each test.

swtpm_setup (EK certificates from a local CA) costs about a second, so it runs once; each test
gets its own copy of the state in a short /tmp directory (AF_UNIX paths are limited to 107
bytes, ".ctrl" included) and its own swtpm process, stopped by the fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ensign.daemon.tpm.emulator import SwtpmEmulator

os.environ.setdefault("TSS2_LOG", "all+NONE")

needs_swtpm = pytest.mark.skipif(
    shutil.which("swtpm") is None or shutil.which("swtpm_setup") is None,
    reason="swtpm is not installed (apt-get install swtpm swtpm-tools; scripts/bootstrap.sh)")


@pytest.fixture(scope="session")
def manufactured_tpm() -> Iterator[Path]:
    """A data_dir/tpm directory with a manufactured TPM state and its local CA."""
    if shutil.which("swtpm_setup") is None:
        pytest.skip("swtpm is not installed")
    root = Path(tempfile.mkdtemp(prefix="enst", dir="/tmp"))
    emu = SwtpmEmulator(root / "tpm")
    emu.dir.mkdir(mode=0o700)
    emu._manufacture()
    yield root / "tpm"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def data_dir(manufactured_tpm: Path) -> Iterator[Path]:
    """A fresh data_dir holding a copy of the manufactured TPM (same EK in every test)."""
    root = Path(tempfile.mkdtemp(prefix="enst", dir="/tmp"))
    shutil.copytree(manufactured_tpm, root / "tpm", ignore=shutil.ignore_patterns("*.sock*"))
    yield root
    _stop_leftover(root / "tpm")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def swtpm(data_dir: Path) -> Iterator[SwtpmEmulator]:
    """An swtpm the *test* owns (the service then uses it with emulator = false)."""
    emu = SwtpmEmulator(data_dir / "ext")
    shutil.copytree(data_dir / "tpm", emu.dir, dirs_exist_ok=True)
    emu.start()
    yield emu
    resume(emu)
    emu.stop()


def ca_files(emu_dir: Path) -> list[Path]:
    state = emu_dir / "localca" / "state"
    return [state / "swtpm-localca-rootca-cert.pem", state / "issuercert.pem"]


def pause(emu: SwtpmEmulator) -> None:
    assert emu.pid is not None
    os.kill(emu.pid, signal.SIGSTOP)


def resume(emu: SwtpmEmulator) -> None:
    if emu.pid is not None:
        os.kill(emu.pid, signal.SIGCONT)


def extend_out_of_band(tcti: str, pcr: int, data: bytes = b"out of band") -> None:
    """What another root process on the node could do: extend a PCR behind Ensign's back."""
    import hashlib

    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

    with ESAPI(tcti) as ctx:
        ctx.pcr_extend(ESYS_TR(pcr), TPML_DIGEST_VALUES([TPMT_HA(
            hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=hashlib.sha256(data).digest()))]))


def _stop_leftover(tpm_dir: Path) -> None:
    """Stop any swtpm a failed test left running on this directory (by its pid file)."""
    for pidfile in tpm_dir.parent.rglob("swtpm.pid"):
        try:
            pid = int(pidfile.read_text())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"swtpm" in cmd and str(tpm_dir.parent).encode() in cmd:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
