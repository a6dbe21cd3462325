"""The daemon's lifecycle: open, serve, rotate, drain, close. The graph is built in wiring.py.

Signals are handled in two stages: the first SIGTERM/SIGINT stops accepting and drains, a
second one exits at once with 128+signum. SIGHUP re-reads the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ensign.daemon.actions import IssuanceIndex
from ensign.daemon.audit.event import AuditEvent
from ensign.daemon.config import Config
from ensign.daemon.config import load as load_config
from ensign.daemon.errors import ConfigError, EnsignError
from ensign.daemon.files import DirLock
from ensign.daemon.issuing import utcnow
from ensign.daemon.observe import metrics
from ensign.daemon.wiring import Node, build

log = logging.getLogger(__name__)

MAX_TICK = 1.0  # seconds between maintenance passes at most
WARN_EVERY = 60.0  # seconds between log warnings about a failing attestor


def _raise_fd_limit() -> None:
    # Every open connection holds a socket and a pidfd: allow as many as the hard limit permits.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Daemon:
    def __init__(self, config: Config, clock: Callable[[], datetime] = utcnow,
                 config_path: Path | None = None, lock: DirLock | None = None) -> None:
        self.config = config
        self._lock = lock  # the data_dir lock, if the caller took it already
        self._config_path = config_path
        self.node: Node = build(config, clock)
        self._metrics_server: Any = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    async def run(self, ready: Callable[[], Awaitable[None]] | None = None) -> int:
        if self.node.fleet is not None:
            # First of all: a bad database URL, host, credential or schema stops the start
            # (exit 78) before anything is written, here (not even the lock below, which
            # creates data_dir) or in the database. The check only reads.
            await self.node.fleet.check()
        # One daemon per data_dir, checked before anything is touched: a second one would
        # stop the first's swtpm, fork its audit chain and unlink its sockets.
        lock = self._lock or DirLock.take(self.config.data_dir, "data_dir")
        try:
            return await self._run_locked(ready)
        finally:
            lock.release()

    async def _run_locked(self, ready: Callable[[], Awaitable[None]] | None) -> int:
        n = self.node
        _raise_fd_limit()
        # Whatever the daemon creates (SQLite WAL files, state) is private unless made otherwise.
        os.umask(0o077)
        os.chmod(self.config.data_dir, 0o700)
        await n.store.open()
        await n.roles.load()
        await n.registry.load()
        await n.grants.load()
        if self.config.ca.seal_with_tpm and n.tpm is None:
            raise ConfigError("ca.seal_with_tpm needs attestors.tpm.enabled")
        n.audit.open()  # first: the TPM and the CA record events as they start
        n.audit.observers.append(n.issuances.observe)  # from the first record on
        try:
            if n.tpm is not None:
                await n.tpm.start()
            n.ca.load_or_create()
            n.delegation_keys.load_or_create()
            if n.fleet is not None:
                # node row, published keys (JWT-SVID and delegated-token), listener, heartbeat,
                # shipping: after both key sets exist
                await n.fleet.start()
            if n.https_tls is not None:
                n.https_tls.refresh()  # a certificate that cannot load: a config error now
            await n.federation.start()
            n.audit.observers.append(metrics.observe_audit)
            n.audit.write_timer = metrics.AUDIT_WRITE_SECONDS.observe
            if n.responder is not None:
                n.responder.start()
            await n.issuers.start()
            await self._load_issuances()
        except BaseException as e:
            await self._abort_start(e)
            raise
        n.audit.record_nowait(AuditEvent(type="daemon.start", details={
            "trust_domain": self.config.trust_domain, "attestors": n.pipeline.names}))
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            if n.https is not None:  # first: listening once the sockets are (harness, systemd)
                await n.https.start()
            await n.workload_server.start()
            await n.admin_server.start()
            if self.config.metrics.listen:
                self._metrics_server = metrics.serve(self.config.metrics.listen, n.state.gauges)
            # What start built (modules, registry, keys) lives as long as the daemon: kept out of
            # the cyclic collector's scans, which otherwise walk it again and again under load.
            gc.freeze()
            log.info("serving", extra={
                "socket": str(self.config.socket_path),
                "admin_socket": str(self.config.admin_socket_path),
                "trust_domain": self.config.trust_domain,
                "attestors": n.pipeline.names,
            })
            if ready is not None:  # e.g. dev mode's demo role: a registry write, awaited
                await ready()
            await self._maintain_until_stopped()
        finally:
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._shutdown()
        return 0

    async def _load_issuances(self) -> None:
        """Attribute actions done with tokens issued before this start: read the issuance
        records of the tokens that may still be reported (in a thread: segments are large)."""
        n, cfg = self.node, self.config
        longest = max([cfg.delegation.token_ttl, cfg.svid.jwt_ttl] + [
            timedelta(seconds=e.jwt_ttl) for e in n.registry.lookup.values()])
        loaded = await asyncio.to_thread(IssuanceIndex.load, n.audit.dir, n.clock(), longest)
        n.issuances.merge(loaded)
        log.info("issuance records loaded", extra={"tokens": len(loaded)})

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            os._exit(128 + sig)
        log.info("stopping", extra={"signal": sig.name})
        self._stop.set()
        self._wake.set()

    def _reload(self) -> None:
        """SIGHUP: re-read the config. Applied at once: log_level and the delegation issuers'
        key files. Everything else needs a restart (said in the log); the registry stays."""
        if self._config_path is None:
            log.warning("SIGHUP ignored: no config file (dev mode)")
            return
        try:
            new = load_config(self._config_path)
        except EnsignError as e:
            log.error("reload failed; keeping the running config", extra={
                "reason": e.diagnostics()})
            return
        logging.getLogger().setLevel(new.log_level.upper())
        self.node.issuers.load_files()
        pending = sorted(k for k in type(new).model_fields
                         if k != "log_level" and getattr(new, k) != getattr(self.config, k))
        log.info("config reloaded", extra={"log_level": new.log_level,
                                           "needs_restart": pending})

    async def _maintain_until_stopped(self) -> None:
        """Rotate the CA and SVIDs when due and wake the streams that must see it."""
        n = self.node
        warned = -WARN_EVERY
        while not self._stop.is_set():
            if time.monotonic() - warned >= WARN_EVERY:
                warned = time.monotonic()
                for name, why in sorted(n.pipeline.problems().items()):
                    log.warning("attestor failing: callers get no selectors from it",
                                extra={"attestor": name, "reason": why})
            try:
                await n.registry.expire_due()
            except EnsignError as e:  # the store is unreachable: entries stopped issuing anyway
                log.debug("expiry not recorded", extra={"reason": e.diagnostics()})
            if n.responder is not None:
                n.responder.save()
            changed = False
            if n.ca.maintain():
                n.cache.forget_all()
                changed = True
                log.info("CA authorities changed")
                n.audit.record_nowait(AuditEvent(type="ca.rotated", details={
                    "authorities": [a.jwt_kid for a in n.ca.authorities()],
                    "signing": n.ca.current().jwt_kid}))
            if n.https_tls is not None:
                n.https_tls.refresh()
            if n.delegation_keys.maintain():
                log.info("delegation signing keys changed", extra={
                    "published": [k.kid for k in n.delegation_keys.published()]})
            if n.cache.expire_due():
                changed = True
            if changed:
                n.broadcast.publish()
            now = n.clock()
            # entry expiry is checked every tick (<= 1 s)
            due = [n.ca.next_event_at(), n.delegation_keys.next_event_at()]
            nxt = n.cache.next_refresh_at()
            if nxt is not None:
                due.append(nxt)
            delay = max(0.01, min(MAX_TICK, min((d - now).total_seconds() for d in due)))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _abort_start(self, err: BaseException) -> None:
        """A start refused once the audit log is open (an unsealable CA key, a bad upstream CA):
        the records made so far and the reason are written, and the writer thread stops while
        the loop still runs (else its last batch reports to a closed loop, in the log after
        the one line that says why)."""
        n = self.node
        reason = err.diagnostics() if isinstance(err, EnsignError) else type(err).__name__
        for step in ((n.federation.aclose, n.issuers.aclose)
                     + ((n.tpm.aclose,) if n.tpm is not None else ())):
            try:
                await step()
            except Exception:
                log.exception("cleanup after a failed start")
        try:
            await n.audit.close(failure=reason)
        except Exception:
            log.exception("closing the audit log after a failed start")
        if n.fleet is not None:
            try:
                await n.fleet.stop()  # ships the records made so far, when it can
            except Exception:
                log.exception("stopping the fleet after a failed start")
        await n.store.close()

    async def _shutdown(self) -> None:
        n = self.node
        n.state.draining = True
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if n.https is not None:
            n.https.close()
        for server in (n.workload_server, n.admin_server):
            server.close()
        for server in (n.workload_server, n.admin_server):
            await server.wait_closed()
        if n.https is not None:
            await n.https.wait_closed()
        await n.federation.aclose()
        await n.pipeline.aclose()
        if n.tpm is not None:
            await n.tpm.aclose()
        if n.responder is not None:
            n.responder.save(force=True)
        await n.issuers.aclose()
        await n.audit.close()
        if n.fleet is not None:
            await n.fleet.stop()  # ships the last records (daemon.stop) when it can
        n.tracker.close_all()
        await n.store.close()
        log.info("stopped")
