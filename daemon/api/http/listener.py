"""The HTTPS listener: TCP accept, connection limits and the TLS handshake, on the daemon's loop.

The listener accepts plain TCP and upgrades each connection with `loop.start_tls`, so that:
  * connections over `[http] max_connections`, or over `[limits] max_connections_per_uid` from
    one client address, are closed before any TLS work;
  * each handshake takes the current context (`ServerTls.context`): a rotated certificate is
    used by new connections at once, without a restart;
  * a handshake that fails (a client certificate from another CA, an expired one, no TLS at
    all) or stalls past `[http] handshake_timeout` is one log line and a metric, not silence;
  * only then does aiohttp's request handler (a protocol factory) see the connection.
`_Conn` stays the transport's protocol and forwards to the handler, so the connection is
counted until it closes, whoever closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ensign.daemon.errors import ConfigError
from ensign.daemon.observe import metrics
from ensign.daemon.server import UidLimits

log = logging.getLogger(__name__)

LOG_RATE, LOG_BURST = 5.0, 20.0  # refused-connection lines per second (the metric counts all)


class _Refusals:
    """Rate-limited logging of refused connections: a flood must not become a log flood."""

    def __init__(self) -> None:
        self._tokens = LOG_BURST
        self._at = time.monotonic()
        self._suppressed = 0

    def note(self, reason: str, address: str, detail: str) -> None:
        metrics.http_refused(reason)
        now = time.monotonic()
        self._tokens = min(LOG_BURST, self._tokens + (now - self._at) * LOG_RATE)
        self._at = now
        if self._tokens < 1:
            self._suppressed += 1
            return
        self._tokens -= 1
        log.warning("HTTPS connection refused", extra={
            "reason": reason, "peer": address, "detail": detail[:300],
            "suppressed_before": self._suppressed})
        self._suppressed = 0


class HttpsListener:
    def __init__(self, listen: str, *, app: web.Application,
                 context: Callable[[], ssl.SSLContext | None], limits: UidLimits,
                 max_connections: int, handshake_timeout: float) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (the operator's choice)
        self._port = int(port)
        # aiohttp's request handler, a protocol factory; no signal handlers, no access log
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     keepalive_timeout=30.0, lingering_time=1.0)
        self._context = context
        self._limits = limits
        self._max = max_connections
        self._timeout = handshake_timeout
        self._server: asyncio.Server | None = None
        self._open: set[_Conn] = set()
        self._refusals = _Refusals()

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the kernel's pick for port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Conn(self), self._host, self._port, backlog=512,
                family=socket.AF_UNSPEC, reuse_address=True)
        except OSError as e:
            raise ConfigError(f"http.listen {self._host}:{self._port}: {e.strerror}") from None
        log.info("HTTPS listening", extra={"listen": f"{self._host}:{self.port}"})

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._open):
            conn.abort()

    async def wait_closed(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._runner.cleanup(), 5)

    # -- one connection --------------------------------------------------------------------

    def _admit(self, conn: _Conn) -> bool:
        if len(self._open) >= self._max:
            self._refusals.note("max_connections", conn.address,
                                f"{len(self._open)} connections open ([http] max_connections)")
            return False
        if not self._limits.connect(conn.address):
            self._limits.disconnect(conn.address)
            self._refusals.note("per_client", conn.address,
                                "too many connections from this address "
                                "([limits] max_connections_per_uid)")
            return False
        self._open.add(conn)
        metrics.HTTP_CONNECTIONS.set(len(self._open))
        return True

    def _release(self, conn: _Conn) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._limits.disconnect(conn.address)
            metrics.HTTP_CONNECTIONS.set(len(self._open))

    async def _handshake(self, conn: _Conn, raw: asyncio.Transport) -> None:
        ctx = self._context()
        if ctx is None:
            raw.abort()
            return
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(raw, conn, ctx, server_side=True,
                                       ssl_handshake_timeout=self._timeout)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as e:
            slow = isinstance(e, TimeoutError) or "taking longer" in str(e)
            reason = "handshake_timeout" if slow else "handshake_failed"
            self._refusals.note(reason, conn.address, str(e) or type(e).__name__)
            self._release(conn)
            return
        if tls is None or tls.is_closing():
            self._release(conn)
            return
        server = self._runner.server
        assert server is not None
        conn.attach(server(), tls)


class _Conn(asyncio.Protocol):
    """The transport's protocol for a connection's life: counts it, forwards to the handler."""

    def __init__(self, listener: HttpsListener) -> None:
        self._listener = listener
        self.address = ""
        self._raw: asyncio.Transport | None = None
        self._app: asyncio.Protocol | None = None
        self._pending: list[bytes] = []
        self._eof = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer: Any = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "?"
        self._raw = transport
        if not self._listener._admit(self):
            transport.abort()
            return
        self._task = asyncio.get_running_loop().create_task(
            self._listener._handshake(self, transport))

    def attach(self, app: asyncio.Protocol, tls: asyncio.Transport) -> None:
        self._app = app
        app.connection_made(tls)
        for data in self._pending:  # arrived with the handshake's last flight
            app.data_received(data)
        self._pending.clear()
        if self._eof:
            app.eof_received()

    def abort(self) -> None:
        if self._raw is not None:
            self._raw.abort()

    def data_received(self, data: bytes) -> None:
        if self._app is not None:
            self._app.data_received(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool | None:
        if self._app is not None:
            return self._app.eof_received()
        self._eof = True
        return None

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener._release(self)
        if self._app is not None:
            self._app.connection_lost(exc)
