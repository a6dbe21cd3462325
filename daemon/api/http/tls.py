"""The HTTPS endpoint's TLS: its certificate, the client CAs, and rotation without a restart.

The serving certificate is `[http] tls_cert/tls_key` when set (re-read when the files change,
so an operator's renewal needs no restart), else the node's own X.509-SVID for
`spiffe://<td>/ensign/node/<node_name>`, minted by the CA and renewed at half life or when the
CA's signing authority changes. Client certificates are requested, not required (resource
servers fetch metadata without one), and verified against this trust domain's X.509 bundle.

Each change builds a new `ssl.SSLContext`; the listener takes `context` for every new handshake,
so new connections use the new certificate while open ones keep theirs.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ensign.daemon import keys
from ensign.daemon.config import Config, node_name
from ensign.daemon.errors import ConfigError
from ensign.daemon.files import ensure_private_dir, write_private
from ensign.daemon.issuing import CertificateAuthority, X509Svid, mint_x509_svid
from ensign.daemon.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

ALPN = ["http/1.1"]


def node_spiffe_id(config: Config) -> SpiffeId:
    return SpiffeId.parse(f"spiffe://{config.trust_domain}/ensign/node/{node_name(config)}")


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ServerTls:
    """Holds the current server context; `refresh()` (every maintenance tick) renews it."""

    def __init__(self, config: Config, ca: CertificateAuthority,
                 clock: Callable[[], datetime]) -> None:
        self._cfg = config
        self._ca = ca
        self._clock = clock
        self._dir = config.data_dir / "http"
        self.spiffe_id = node_spiffe_id(config)
        self.context: ssl.SSLContext | None = None
        self.svid: X509Svid | None = None  # the node SVID when it is what we serve
        self._files: tuple[object, ...] = ()
        self._bundle: bytes = b""
        self._authority = ""

    def refresh(self) -> bool:
        """Build a new context if the certificate or the client CAs changed. True if so."""
        bundle = self._ca.x509_bundle_der()
        http = self._cfg.http
        if http.tls_cert is not None and http.tls_key is not None:
            try:
                files: tuple[object, ...] = (_stamp(http.tls_cert), _stamp(http.tls_key))
            except OSError as e:
                if self.context is None:
                    raise ConfigError(f"http.tls_cert/tls_key: {e}") from None
                log.error("HTTPS certificate files unreadable; serving the previous one",
                          extra={"error": str(e)})
                return False
            if files == self._files and bundle is self._bundle:
                return False
            cert, key = http.tls_cert, http.tls_key
        else:
            authority = self._ca.current().jwt_kid
            due = self.svid is None or self._clock() >= self._renew_at(self.svid)
            if not due and authority == self._authority and bundle is self._bundle:
                return False
            if due or authority != self._authority:
                self._mint()
                self._authority = authority
            files = ()
            cert, key = self._dir / "node.pem", self._dir / "node.key"
        try:
            self.context = self._build(cert, key, self._ca.x509_bundle_pem())
        except (OSError, ssl.SSLError) as e:
            if self.context is None:
                raise ConfigError(f"cannot load the HTTPS certificate {cert}: {e}") from None
            log.error("HTTPS certificate unusable; serving the previous one",
                      extra={"cert": str(cert), "error": str(e)})
            return False
        self._files, self._bundle = files, bundle
        log.info("HTTPS certificate loaded", extra={
            "cert": str(cert), "spiffe_id": str(self.spiffe_id) if not files else ""})
        return True

    @staticmethod
    def _renew_at(svid: X509Svid) -> datetime:
        return svid.not_before + (svid.not_after - svid.not_before) / 2

    def _mint(self) -> None:
        svid = mint_x509_svid(authority=self._ca.current().signing(), spiffe_id=self.spiffe_id,
                              key=keys.generate(self._cfg.svid.key_type),
                              ttl=self._cfg.svid.x509_ttl, now=self._clock())
        ensure_private_dir(self._dir)
        write_private(self._dir / "node.key", keys.to_pem(svid.key))
        write_private(self._dir / "node.pem", svid.chain_pem())
        self.svid = svid

    @staticmethod
    def _build(cert: Path, key: Path, client_cas: bytes) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert), str(key))
        # Ask for a client certificate (the token and introspection endpoints need one) and
        # verify it against this trust domain's bundle; metadata and keys need none.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=client_cas.decode())
        ctx.set_alpn_protocols(ALPN)
        return ctx
