"""`ensign helper`: keep a program's certificate, key, bundle and JWT files current, like
spiffe-helper, for programs that read PEM files (nginx, PostgreSQL, a JVM) instead of calling
the Workload API.

It holds one FetchX509SVID stream open; every X.509 update (rotation, registry change) rewrites
the files, and JWT-SVIDs are fetched again at half their lifetime. After each write it signals
the process named by a pid file, signals the command it started (`cmd` with `renew_signal`, as
spiffe-helper does), or runs `cmd` as a hook; `--once` exits after the first write. When the
daemon goes away (restart, upgrade) it reconnects with capped exponential backoff and jitter
instead of exiting; SIGTERM or SIGINT end it (and the command it started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ensign.daemon.errors import UsageError
from ensign.daemon.issuing import load_der_chain
from ensign.proto import workload_pb2 as pb
from ensign.proto.workload_grpc import SpiffeWorkloadAPIStub

from .common import (
    DEFAULT_SOCKET,
    Unreachable,
    add_workload_flags,
    channel,
    fmt_duration,
    fmt_time,
    progress,
    socket_path,
)
from .helper_files import CertDir, parse_signal, read_pid

if TYPE_CHECKING:  # its pydantic models: imported when the helper runs (helper_settings)
    from .helper_settings import HelperSettings

HEADER = {"workload.spiffe.io": "true"}
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0  # seconds between reconnection attempts
HOOK_TIMEOUT = 60.0  # a `cmd` hook that runs longer is killed
MIN_JWT_REFRESH = 1.0
TIMEOUT = 10.0  # per unary call


def register(sub: Any) -> None:
    p = sub.add_parser("helper", help="keep SVID files current for a program (spiffe-helper)")
    p.add_argument("--config", type=Path, help="TOML file with spiffe-helper's keys")
    add_workload_flags(p, timeout=False)  # agent_address in the config file
    p.add_argument("--write", metavar="DIR", help="directory for the files (cert_dir)")
    p.add_argument("--jwt-audience", action="append", metavar="A",
                   help="also keep a JWT-SVID for audience A (jwt_svid.token; repeatable: "
                        "jwt_svid.N.token from the second on)")
    p.add_argument("--signal", metavar="SIG", help="signal to send after each write (SIGHUP)")
    p.add_argument("--pid-file", metavar="F", help="send --signal to the pid in this file")
    p.add_argument("--cmd", metavar="CMD", help="with --signal: start CMD and signal it after "
                   "each write; alone: run CMD after each write")
    p.add_argument("--once", action="store_true", help="write once and exit")
    p.set_defaults(func=helper)


def _settings(args: argparse.Namespace) -> HelperSettings:
    from .helper_settings import load_settings

    overrides: dict[str, Any] = {
        "agent_address": args.socket, "cert_dir": args.write, "renew_signal": args.signal,
        "pid_file_name": args.pid_file, "daemon_mode": False if args.once else None}
    if args.cmd is not None:
        overrides.update(cmd=args.cmd, cmd_args="")
    if args.jwt_audience:
        overrides["jwt_svids"] = [
            {"jwt_audience": a, "jwt_svid_file_name":
             "jwt_svid.token" if i == 0 else f"jwt_svid.{i + 1}.token"}
            for i, a in enumerate(args.jwt_audience)]
    s = load_settings(args.config, overrides)
    if not s.cert_dir:
        raise UsageError("where to write: --write DIR or cert_dir in the config")
    if s.pid_file_name and not s.renew_signal:
        raise UsageError("--pid-file needs --signal (renew_signal)")
    if s.renew_signal:
        parse_signal(s.renew_signal)
    return s


def _log(message: str) -> None:
    progress("helper", message)


class Notifier:
    """Whom to tell after a write: a pid file's process, our child, or a hook."""

    def __init__(self, s: HelperSettings) -> None:
        self._sig = parse_signal(s.renew_signal) if s.renew_signal else None
        self._pid_file = Path(s.pid_file_name) if s.pid_file_name else None
        self._argv = shlex.split(s.cmd) + shlex.split(s.cmd_args) if s.cmd else []
        self._child: asyncio.subprocess.Process | None = None

    async def __call__(self) -> None:
        if self._pid_file is not None and self._sig is not None:
            try:
                os.kill(read_pid(self._pid_file), self._sig)
            except (UsageError, ProcessLookupError, PermissionError) as e:
                _log(f"could not signal the process in {self._pid_file}: {e}")  # keep going
        elif self._argv and self._sig is not None:
            if self._child is None or self._child.returncode is not None:
                self._child = await asyncio.create_subprocess_exec(*self._argv)
                _log(f"started {self._argv[0]} (pid {self._child.pid})")
            else:
                self._child.send_signal(self._sig)
        elif self._argv:
            await self._hook()

    async def _hook(self) -> None:
        proc = await asyncio.create_subprocess_exec(*self._argv)
        try:
            code = await asyncio.wait_for(proc.wait(), HOOK_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            _log(f"{self._argv[0]} ran longer than {fmt_duration(HOOK_TIMEOUT)} and was killed")
            return
        if code != 0:
            _log(f"{self._argv[0]} exited {code}")

    async def close(self) -> None:
        if self._child is not None and self._child.returncode is None:
            self._child.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._child.wait(), 10)


class Helper:
    def __init__(self, s: HelperSettings, out: CertDir, stop: asyncio.Event) -> None:
        self.s = s
        self.out = out
        self.stop = stop
        self.notify = Notifier(s)
        self.socket = socket_path(s.agent_address or None, "SPIFFE_ENDPOINT_SOCKET",
                                  DEFAULT_SOCKET)

    async def run(self) -> int:
        delay = BACKOFF_MIN
        while not self.stop.is_set():
            wrote = False
            try:
                wrote = await self._session()
                if wrote and not self.s.daemon_mode:
                    return 0
                reason = "the daemon closed the stream"
            except (GRPCError, StreamTerminatedError, ConnectionError, Unreachable) as e:
                if not self.s.daemon_mode:
                    raise
                reason = (f"{e.status.name}: {e.message}" if isinstance(e, GRPCError)
                          else str(e) or type(e).__name__)
            if self.stop.is_set():
                break
            if wrote:
                delay = BACKOFF_MIN
            pause = delay * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not crypto)
            _log(f"{reason}; reconnecting in {pause:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), pause)
            delay = min(delay * 2, BACKOFF_MAX)
        return 0

    async def _session(self) -> bool:
        """One connection: write on every update until the stream ends. True if it wrote."""
        wrote = False
        async with channel(self.socket) as ch:
            stub = SpiffeWorkloadAPIStub(ch)
            async with stub.FetchX509SVID.open(metadata=HEADER) as stream:
                await stream.send_message(pb.X509SVIDRequest(), end=True)
                jwt_due: float | None = None
                receiving = asyncio.ensure_future(stream.recv_message())
                stopping = asyncio.ensure_future(self.stop.wait())
                try:
                    while True:
                        wait = None if jwt_due is None else max(0.0, jwt_due - time.time())
                        await asyncio.wait({receiving, stopping}, timeout=wait,
                                           return_when=asyncio.FIRST_COMPLETED)
                        if stopping.done():
                            return wrote
                        if receiving.done():
                            resp = receiving.result()
                            if resp is None:
                                return wrote
                            self._write_x509(resp)
                            receiving = asyncio.ensure_future(stream.recv_message())
                        jwt_due = await self._write_jwts(stub)
                        self.out.sync()
                        wrote = True
                        await self.notify()
                        if not self.s.daemon_mode:
                            return wrote
                finally:
                    for task in (receiving, stopping):
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            await task
                    with contextlib.suppress(Exception):
                        await stream.cancel()  # else leaving the stream waits for its end

    def _write_x509(self, resp: Any) -> None:
        s = self.s
        svids = list(resp.svids)
        svid = next((v for v in svids if s.hint and v.hint == s.hint), svids[0])
        certs = load_der_chain(svid.x509_svid)
        bundle = load_der_chain(svid.bundle)
        leaf_part = certs[:1] if s.add_intermediates_to_bundle else certs
        bundle_part = bundle + (certs[1:] if s.add_intermediates_to_bundle else [])
        key = load_der_private_key(svid.x509_svid_key, password=None)
        pem = b"".join(c.public_bytes(Encoding.PEM) for c in leaf_part)
        self.out.write(s.svid_key_file_name,
                       key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
                       s.key_file_mode)
        self.out.write(s.svid_file_name, pem, s.cert_file_mode)
        self.out.write(s.svid_bundle_file_name,
                       b"".join(c.public_bytes(Encoding.PEM) for c in bundle_part),
                       s.cert_file_mode)
        _log(f"wrote {s.svid_file_name}, {s.svid_key_file_name}, {s.svid_bundle_file_name} "
             f"for {svid.spiffe_id} (serial {certs[0].serial_number:x}, valid until "
             f"{fmt_time(certs[0].not_valid_after_utc.timestamp())}) to {self.out.path}")

    async def _write_jwts(self, stub: SpiffeWorkloadAPIStub) -> float | None:
        """Fetch and write every JWT-SVID and the JWKS; when the next fetch is due."""
        import jwt  # PyJWT: only a helper that writes JWT-SVIDs needs it

        s = self.s
        due: float | None = None
        for j in s.jwt_svids:
            resp = await stub.FetchJWTSVID(pb.JWTSVIDRequest(
                audience=[j.jwt_audience, *j.jwt_extra_audiences]), metadata=HEADER,
                timeout=TIMEOUT)
            token = resp.svids[0].svid
            self.out.write(j.jwt_svid_file_name, token.encode(), s.jwt_svid_file_mode)
            exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])
            half = time.time() + max(MIN_JWT_REFRESH, (exp - time.time()) / 2)
            due = half if due is None else min(due, half)
            _log(f"wrote {j.jwt_svid_file_name} for audience {j.jwt_audience} (expires "
                 f"{fmt_time(exp)})")
        if s.jwt_bundle_file_name:
            async with stub.FetchJWTBundles.open(metadata=HEADER, timeout=TIMEOUT) as st:
                await st.send_message(pb.JWTBundlesRequest(), end=True)
                bundles = await st.recv_message()
                await st.cancel()
            if bundles is not None and bundles.bundles:
                self.out.write(s.jwt_bundle_file_name, next(iter(bundles.bundles.values())),
                               s.jwt_bundle_file_mode)
        return due


async def helper(args: argparse.Namespace) -> int:
    s = _settings(args)
    out = CertDir.open(Path(s.cert_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    h = Helper(s, out, stop)
    try:
        return await h.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await h.notify.close()
        out.close()


__all__ = ["Helper", "Notifier", "register"]
