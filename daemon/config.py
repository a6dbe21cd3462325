"""The daemon's configuration: frozen pydantic models holding every default, and `load()`.

`load()` is the only code that reads the config file or the environment. Every other module
receives a typed section in its constructor.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from ensign.attestors.sigstore import SigstoreConfig
from ensign.attestors.systemd import SystemdConfig
from ensign.attestors.tpm import TpmConfig
from ensign.attestors.tpm import dev_config as tpm_dev_config
from ensign.attestors.unix import UnixConfig
from ensign.daemon.config_types import Duration, Size, StrictModel
from ensign.daemon.errors import ConfigError, InvalidRequest
from ensign.daemon.spiffe_id import SpiffeId, validate_trust_domain

DEFAULT_CONFIG_PATH = Path("/etc/ensign/ensign.toml")
KeyType = Literal["ec-p256", "ec-p384", "rsa-2048"]


class CaConfig(StrictModel):
    key_type: KeyType = "ec-p256"
    ttl: Duration = timedelta(hours=24)
    upstream_cert: Path | None = None
    upstream_key: Path | None = None
    seal_with_tpm: bool = False

    @field_validator("ttl")
    @classmethod
    def _ttl_bounds(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=10) <= v <= timedelta(days=3650):
            raise ValueError("must be between 10s and 3650d")
        return v

    @model_validator(mode="after")
    def _upstream_pair(self) -> CaConfig:
        if (self.upstream_cert is None) != (self.upstream_key is None):
            raise ValueError("upstream_cert and upstream_key must be set together")
        return self


class SvidConfig(StrictModel):
    x509_ttl: Duration = timedelta(hours=1)
    jwt_ttl: Duration = timedelta(minutes=5)
    key_type: KeyType = "ec-p256"
    jwt_issuer: str | None = None

    @field_validator("x509_ttl", "jwt_ttl")
    @classmethod
    def _ttl_bounds(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= v <= timedelta(days=30):
            raise ValueError("must be between 1s and 30d")
        return v


class PolicyConfig(StrictModel):
    # Least privilege: an agent without roles gets no JWT-SVID unless this says otherwise.
    default_allow_audiences: bool = False


class AttestorsConfig(StrictModel):
    unix: UnixConfig = Field(default_factory=UnixConfig)
    systemd: SystemdConfig = Field(default_factory=SystemdConfig)
    sigstore: SigstoreConfig = Field(default_factory=SigstoreConfig)
    tpm: TpmConfig = Field(default_factory=TpmConfig)


class DelegationIssuer(StrictModel):
    issuer: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    audience: str = "ensign"

    @model_validator(mode="after")
    def _one_source(self) -> DelegationIssuer:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of jwks_file and jwks_url")
        return self


class DelegationConfig(StrictModel):
    enabled: bool = False
    max_chain_depth: int = Field(default=3, ge=1, le=16)
    token_ttl: Duration = timedelta(minutes=5)  # the longest a delegated token lives
    jwks_refresh: Duration = timedelta(minutes=5)  # how often jwks_url issuers are re-fetched
    # Delegated tokens are signed by a key set of their own (never the JWT-SVID keys).
    signing_alg: Literal["ES256", "RS256"] = "ES256"  # RFC 9068 names RS256
    key_rotation: Duration = timedelta(days=30)  # how long one key signs
    issuers: list[DelegationIssuer] = Field(default_factory=list)

    @field_validator("token_ttl")
    @classmethod
    def _token_ttl(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= v <= timedelta(days=1):
            raise ValueError("must be between 1s and 1d")
        return v

    @field_validator("key_rotation")
    @classmethod
    def _rotation(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=10) <= v <= timedelta(days=3650):
            raise ValueError("must be between 10s and 3650d")
        return v


_NODE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


class HttpConfig(StrictModel):
    """The HTTPS endpoint for resource servers and federation (off while `listen` is empty)."""

    listen: str = ""  # "host:port", e.g. "0.0.0.0:8443"
    tls_cert: Path | None = None  # default: the node's own X.509-SVID, rotated like any SVID
    tls_key: Path | None = None
    issuer: str = ""  # https URL: `iss` of delegated tokens and the metadata's issuer
    # The node's name in its SPIFFE ID (spiffe://<td>/ensign/node/<node_name>); default: the
    # host name (config.node_name() is the one place that reads it).
    node_name: str = ""
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
        if v and not _NODE_NAME.match(v):
            raise ValueError("letters, digits, '.', '_' and '-' only (a SPIFFE ID path segment)")
        return v

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

    trust_domain: str
    bundle_endpoint_url: str
    profile: Literal["https_web", "https_spiffe"] = "https_web"
    endpoint_spiffe_id: str = ""  # https_spiffe: the endpoint server's SPIFFE ID
    # https_spiffe: the bundle that authenticates the endpoint until the first fetch (SPIFFE
    # bundle JSON or PEM); afterwards each fetched bundle authenticates the next
    bundle_file: Path | None = None
    # https_web: CA certificates (PEM) that verify the endpoint; default: the system's
    ca_file: Path | None = None

    @field_validator("trust_domain")
    @classmethod
    def _td(cls, v: str) -> str:
        try:
            return validate_trust_domain(v)
        except InvalidRequest as e:
            raise ValueError(str(e)) from None

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


class AuditConfig(StrictModel):
    checkpoint_every: int = Field(default=1000, ge=1)
    checkpoint_interval: Duration = timedelta(seconds=60)
    segment_size: Size = Field(default=64 << 20, ge=4096)  # rotate segments at this size


class AnomalyConfig(StrictModel):
    enabled: bool = True
    action: Literal["alert", "suspend"] = "alert"
    learning_period: Duration = timedelta(minutes=10)  # per agent, before anything is flagged
    rate_min: float = Field(default=10.0, gt=0)  # requests/s never flagged by the baseline alone
    rate_factor: float = Field(default=5.0, gt=1)  # flag above this multiple of the baseline
    rate_sigma: float = Field(default=6.0, gt=0)  # ... or this many standard deviations above
    rate_ceiling: int = Field(default=0, ge=0)  # hard requests/s cap per audience; 0 = none
    burst_threshold: int = Field(default=20, ge=2)  # refusals within burst_window
    burst_window: Duration = timedelta(seconds=10)
    cooldown: Duration = timedelta(minutes=1)  # one finding per signal per agent per cooldown


class LimitsConfig(StrictModel):
    max_connections_per_uid: int = Field(default=1024, ge=0)  # 0 = no cap
    requests_per_second_per_uid: float = Field(default=0.0, ge=0)  # 0 = no rate limit
    burst_per_uid: float = Field(default=200.0, ge=1)  # requests allowed at once
    # One request message on the Workload API socket (RESOURCE_EXHAUSTED above it)
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Bytes of large (over 64 KiB) request messages being received at once, over all callers
    max_pending_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _one_request_fits(self) -> LimitsConfig:
        if self.max_pending_request_bytes < self.max_request_bytes:
            raise ValueError("max_pending_request_bytes must be at least max_request_bytes")
        return self


class MetricsConfig(StrictModel):
    listen: str = ""


class Config(StrictModel):
    trust_domain: str = "example.org"
    socket_path: Path = Path("/run/ensign/agent.sock")
    admin_socket_path: Path = Path("/run/ensign/admin.sock")
    data_dir: Path = Path("/var/lib/ensign")
    # Members of this group may use the admin socket (0660 root:group) when the group exists;
    # otherwise only root and the daemon's own uid (0600).
    admin_group: str = "ensign"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ca: CaConfig = Field(default_factory=CaConfig)
    svid: SvidConfig = Field(default_factory=SvidConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    attestors: AttestorsConfig = Field(default_factory=AttestorsConfig)
    delegation: DelegationConfig = Field(default_factory=DelegationConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, v: str) -> str:
        try:
            return validate_trust_domain(v)
        except InvalidRequest as e:
            raise ValueError(str(e)) from None

    @field_validator("socket_path", "admin_socket_path", "data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(v)!r}")
        return v

    @field_validator("socket_path", "admin_socket_path")
    @classmethod
    def _sun_path_limit(cls, v: Path) -> Path:
        if len(os.fsencode(v)) > 107:
            raise ValueError("a Unix socket path must be at most 107 bytes")
        return v

    @model_validator(mode="after")
    def _distinct_sockets(self) -> Config:
        if self.socket_path == self.admin_socket_path:
            raise ValueError("socket_path and admin_socket_path must differ")
        if any(t.trust_domain == self.trust_domain for t in self.federation.trust_domains):
            raise ValueError("federation.trust_domains: this node's own trust domain cannot "
                             "be federated")
        return self


def node_name(config: Config) -> str:
    """This node's name: `[http] node_name`, else the host name. The one place that reads it
    (the fleet's `[fleet] node_name` joins here)."""
    if config.http.node_name:
        return config.http.node_name
    name = socket.gethostname().split(".")[0] or "localhost"
    return name if _NODE_NAME.match(name) else "node"


def _format_errors(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


def parse(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a parsed TOML document. Raises ConfigError naming each bad key and why."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def resolve_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env["ENSIGN_CONFIG"]) if env.get("ENSIGN_CONFIG") else DEFAULT_CONFIG_PATH


def load(path: Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the config from `path`, else $ENSIGN_CONFIG, else /etc/ensign/ensign.toml."""
    if path is None:
        path = resolve_path(env)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, str(path))


def dev_config(state_dir: Path) -> Config:
    """The embedded default for `ensign daemon --dev`: everything under one state directory."""
    state_dir = state_dir.resolve()
    return parse(
        {
            "trust_domain": "example.org",
            "socket_path": str(state_dir / "agent.sock"),
            "admin_socket_path": str(state_dir / "admin.sock"),
            "data_dir": str(state_dir / "data"),
            "attestors": {"tpm": tpm_dev_config()},
        },
        "embedded dev config",
    )


def to_toml(cfg: Config) -> str:
    """Render a config as TOML (for `ensign config defaults`); our shapes are simple."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def table(prefix: str, d: dict[str, Any]) -> None:
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        arrays = {
            k: v for k, v in d.items() if isinstance(v, list) and v and isinstance(v[0], dict)
        }
        for k, v in d.items():
            if k not in subs and k not in arrays:
                lines.append(f"{k} = {scalar(v)}")
        for k, v in subs.items():
            lines.append("")
            lines.append(f"[{prefix}{k}]")
            table(f"{prefix}{k}.", v)
        for k, items in arrays.items():
            for item in items:
                lines.append("")
                lines.append(f"[[{prefix}{k}]]")
                table(f"{prefix}{k}.", item)

    table("", data)
    return "\n".join(lines) + "\n"
