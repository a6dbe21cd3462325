"""The config sections about other machines: the HTTPS endpoint, federated trust domains and
the fleet's database, and the node name they share.

Kept apart from config.py (which holds `Config` and re-reads these through it) only for size;
like config.py, it imports nothing of the daemon's subpackages.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ensign.daemon.config_types import Duration, StrictModel, TrustDomainName
from ensign.daemon.errors import InvalidRequest
from ensign.daemon.spiffe_id import SpiffeId

#: A node name: a host name's characters, at most 63 (it is a SPIFFE ID path segment and, in a
#: fleet, the node's PostgreSQL role name, which PostgreSQL cuts at 63 bytes).
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_node_name(v: str) -> str:
    if v and not NODE_NAME.match(v):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return v


class HttpConfig(StrictModel):
    """The HTTPS endpoint for resource servers and federation (off while `listen` is empty)."""

    listen: str = ""  # "host:port", e.g. "0.0.0.0:8443"
    tls_cert: Path | None = None  # default: the node's own X.509-SVID, rotated like any SVID
    tls_key: Path | None = None
    issuer: str = ""  # https URL: `iss` of delegated tokens and the metadata's issuer
    # The former spelling of the top-level `node_name` (still read; not both, unless equal).
    node_name: str = Field(default="", exclude=True)
    max_connections: int = Field(default=4096, ge=1)  # all clients together
    handshake_timeout: Duration = timedelta(seconds=10)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            _host, sep, port = v.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"write host:port, got {v!r}")
        return v

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        if v:
            url = urlsplit(v)
            if url.scheme != "https" or not url.hostname or url.query or url.fragment:
                raise ValueError("must be an https URL without query or fragment (RFC 8414 §2)")
            v = v.rstrip("/")
        return v

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, v: str) -> str:
        return check_node_name(v)

    @model_validator(mode="after")
    def _complete(self) -> HttpConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.listen and not self.issuer:
            raise ValueError("issuer is required when listen is set: the https URL resource "
                             "servers reach this endpoint at")
        return self


class FederatedTrustDomain(StrictModel):
    """A trust domain whose bundle is fetched from its SPIFFE bundle endpoint."""

    trust_domain: TrustDomainName
    bundle_endpoint_url: str
    profile: Literal["https_web", "https_spiffe"] = "https_web"
    endpoint_spiffe_id: str = ""  # https_spiffe: the endpoint server's SPIFFE ID
    # https_spiffe: the bundle that authenticates the endpoint until the first fetch (SPIFFE
    # bundle JSON or PEM); afterwards each fetched bundle authenticates the next
    bundle_file: Path | None = None
    # https_web: CA certificates (PEM) that verify the endpoint; default: the system's
    ca_file: Path | None = None

    @field_validator("bundle_endpoint_url")
    @classmethod
    def _url(cls, v: str) -> str:
        url = urlsplit(v)
        if url.scheme != "https" or not url.hostname:
            raise ValueError("must be an https URL")
        return v

    @model_validator(mode="after")
    def _profile(self) -> FederatedTrustDomain:
        if self.profile == "https_spiffe":
            if not self.endpoint_spiffe_id:
                raise ValueError("https_spiffe needs endpoint_spiffe_id")
            try:
                sid = SpiffeId.parse(self.endpoint_spiffe_id)
            except InvalidRequest as e:
                raise ValueError(f"endpoint_spiffe_id: {e}") from None
            if not sid.is_workload:
                raise ValueError("endpoint_spiffe_id needs a path")
        elif self.endpoint_spiffe_id or self.bundle_file:
            raise ValueError("endpoint_spiffe_id and bundle_file belong to profile https_spiffe")
        return self


class FederationConfig(StrictModel):
    trust_domains: list[FederatedTrustDomain] = Field(default_factory=list)
    # spiffe_refresh_hint of the bundle this node serves at /.well-known/spiffe-bundle
    refresh_hint: Duration = timedelta(minutes=5)
    fetch_timeout: Duration = timedelta(seconds=10)  # a hanging endpoint gives up after this

    @model_validator(mode="after")
    def _unique(self) -> FederationConfig:
        names = [t.trust_domain for t in self.trust_domains]
        if len(names) != len(set(names)):
            raise ValueError("each trust_domain may be listed once")
        return self


class FleetConfig(StrictModel):
    # Empty: this node alone (SQLite in data_dir). Else the fleet's PostgreSQL, as this node's
    # own database role (client certificate: sslcert/sslkey in the URL).
    database_url: str = ""
    # The admin role's URL, for registry writes made on this node; empty: this node's registry
    # is read-only (admin writes are made on a node that has it).
    admin_database_url: str = ""
    heartbeat_interval: Duration = timedelta(seconds=5)
    connect_timeout: Duration = timedelta(seconds=5)

    @field_validator("database_url", "admin_database_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("heartbeat_interval", "connect_timeout")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= v <= timedelta(minutes=10):
            raise ValueError("must be between 1s and 10m")
        return v

    @model_validator(mode="after")
    def _admin_needs_node(self) -> FleetConfig:
        if self.admin_database_url and not self.database_url:
            raise ValueError("admin_database_url needs database_url")
        return self
