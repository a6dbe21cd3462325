"""An swtpm the daemon runs and owns (`[attestors.tpm] emulator = true`, and `--dev`).

Layout under `data_dir/tpm/`:

    swtpm/          TPM state (tpm2-00.permall): seeds, persistent EK, NV certificates
    swtpm.sock      data channel (+ swtpm.sock.ctrl: the swtpm TCTI always uses "<path>.ctrl")
    swtpm.pid       so a swtpm left behind by a killed daemon can be found and stopped
    localca/        a private swtpm_localca: the "manufacturer" CA of the emulated EK

On first start swtpm_setup manufactures the TPM: EK (RSA-2048 and P-384), EK certificates
signed by the local CA, a platform certificate. The state is kept, so the EK (and with it the
`tpm:ek:` selector and the saved AK) survive daemon and emulator restarts. `--flags
startup-clear` makes every emulator start a TPM reset, like a reboot: PCRs return to zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ensign.daemon.errors import ConfigError
from ensign.daemon.files import ensure_private_dir
from ensign.daemon.tpm.errors import TpmUnavailable

log = logging.getLogger(__name__)

STATE_FILE = "tpm2-00.permall"
SUN_PATH_MAX = 107
START_TIMEOUT = 10.0
SETUP_TIMEOUT = 60.0


class SwtpmEmulator:
    def __init__(self, tpm_dir: Path) -> None:
        self.dir = tpm_dir
        self.state = tpm_dir / "swtpm"
        self.socket = tpm_dir / "swtpm.sock"
        self.pidfile = tpm_dir / "swtpm.pid"
        self.ca_dir = tpm_dir / "localca"
        self._proc: subprocess.Popen[bytes] | None = None
        ctrl = len(os.fsencode(f"{self.socket}.ctrl"))
        if ctrl > SUN_PATH_MAX:
            raise ConfigError(f"data_dir is too deep for the emulator's socket "
                              f"({self.socket}.ctrl is {ctrl} bytes, at most {SUN_PATH_MAX})")

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    @property
    def ca_files(self) -> list[Path]:
        """The local CA's root: what the emulated EK certificate chains to."""
        return [self.ca_dir / "state" / "swtpm-localca-rootca-cert.pem"]

    @property
    def intermediate_files(self) -> list[Path]:
        return [self.ca_dir / "state" / "issuercert.pem"]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Provision on first use, then spawn swtpm and wait until it accepts connections."""
        if shutil.which("swtpm") is None or shutil.which("swtpm_setup") is None:
            raise ConfigError("attestors.tpm.emulator needs swtpm and swtpm_setup "
                              "(apt-get install swtpm swtpm-tools)")
        ensure_private_dir(self.dir)
        self._stop_leftover()
        if not (self.state / STATE_FILE).exists():
            self._manufacture()
        for path in (self.socket, Path(f"{self.socket}.ctrl")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log_file = self.dir / "swtpm.log"
        self._proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=unixio,path={self.socket}",
             "--ctrl", f"type=unixio,path={self.socket}.ctrl",
             "--flags", "not-need-init,startup-clear",
             "--pid", f"file={self.pidfile}", "--log", f"file={log_file},level=1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C for the daemon must not kill the TPM under it
        )
        self._wait_ready()
        log.info("swtpm started", extra={"pid": self._proc.pid, "socket": str(self.socket)})

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise TpmUnavailable(f"swtpm exited at start: {err.strip() or 'no output'}")
            if Path(f"{self.socket}.ctrl").exists() and self._connects():
                return
            time.sleep(0.005)
        self.stop()
        raise TpmUnavailable(f"swtpm did not open {self.socket} within {START_TIMEOUT:g}s")

    def _connects(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(self.socket))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        log.info("swtpm stopped", extra={"pid": proc.pid})

    def reap(self) -> int | None:
        """If our swtpm has exited, collect it and return its exit status."""
        if self._proc is None:
            return None
        rc = self._proc.poll()
        if rc is not None:
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None
        return rc

    def _stop_leftover(self) -> None:
        """Stop an swtpm on *our* state dir left running by a daemon that was killed.

        Safe only because the daemon holds the data_dir lock (app.py) before it starts the
        TPM: no live daemon can own an swtpm on this state dir, so this one is an orphan."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if not cmdline or os.path.basename(cmdline[0]) != b"swtpm" or (
                f"dir={self.state}".encode() not in cmdline):
            return  # the pid now names some other process: leave it alone
        log.warning("stopping an swtpm left behind by a previous run", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.01)

    # -- manufacturing ---------------------------------------------------------------------

    def _manufacture(self) -> None:
        """swtpm_setup with a private config: leaves /etc and /var/lib/swtpm-localca alone."""
        shutil.rmtree(self.state, ignore_errors=True)
        ensure_private_dir(self.state)
        ensure_private_dir(self.ca_dir)
        ca = self.ca_dir
        (ca / "swtpm_setup.conf").write_text(
            "create_certs_tool = /usr/bin/swtpm_localca\n"
            f"create_certs_tool_config = {ca}/swtpm-localca.conf\n"
            f"create_certs_tool_options = {ca}/swtpm-localca.options\n"
            "active_pcr_banks = sha256\n")
        (ca / "swtpm-localca.conf").write_text(
            f"statedir = {ca}/state\nsigningkey = {ca}/state/signkey.pem\n"
            f"issuercert = {ca}/state/issuercert.pem\ncertserial = {ca}/state/certserial\n")
        # required by --create-platform-cert (swtpm_setup refuses empty platform fields)
        (ca / "swtpm-localca.options").write_text(
            "--platform-manufacturer Ensign\n--platform-version 1.0\n"
            "--platform-model ensign-emulated-node\n")
        cmd = ["swtpm_setup", "--tpm2", "--tpm-state", str(self.state),
               "--config", str(ca / "swtpm_setup.conf"), "--create-ek-cert",
               "--create-platform-cert", "--pcr-banks", "sha256", "--overwrite",
               "--logfile", str(self.dir / "swtpm_setup.log")]
        t0 = time.monotonic()
        try:
            result = subprocess.run(cmd, capture_output=True, timeout=SETUP_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            shutil.rmtree(self.state, ignore_errors=True)
            raise TpmUnavailable(f"swtpm_setup did not finish in {SETUP_TIMEOUT:g}s") from None
        if result.returncode != 0 or not (self.state / STATE_FILE).exists():
            shutil.rmtree(self.state, ignore_errors=True)
            tail = (self.dir / "swtpm_setup.log").read_text(errors="replace")[-500:] if (
                self.dir / "swtpm_setup.log").exists() else result.stderr.decode()[-500:]
            raise TpmUnavailable(f"swtpm_setup failed ({result.returncode}): {tail.strip()}")
        log.info("emulated TPM manufactured", extra={
            "state": str(self.state), "seconds": round(time.monotonic() - t0, 2)})
