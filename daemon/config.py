"""The daemon's configuration: frozen pydantic models holding every default, and `load()`.
(The sections about other machines, [http], [federation] and [fleet], are in config_net.py.)

`load()` is the only code that reads the config file or the environment. Every other module
receives a typed section in its constructor.
"""

from __future__ import annotations

import os
import socket
import tomllib
import urllib.parse
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ensign.attestors.sigstore_config import SigstoreConfig
from ensign.attestors.systemd import SystemdConfig
from ensign.attestors.tpm import TpmConfig
from ensign.attestors.tpm import dev_config as tpm_dev_config
from ensign.attestors.unix import UnixConfig
from ensign.daemon.config_net import (
    NODE_NAME,
    FederatedTrustDomain,
    FederationConfig,
    FleetConfig,
    HttpConfig,
    check_node_name,
)
from ensign.daemon.config_types import Duration, Size, StrictModel, TrustDomainName
from ensign.daemon.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH", "NODE_NAME", "AnomalyConfig", "AttestorsConfig", "AuditConfig",
    "CaConfig", "Config", "DelegationConfig", "DelegationIssuer", "FederatedTrustDomain",
    "FederationConfig", "FleetConfig", "HttpConfig", "KeyType", "LimitsConfig", "MetricsConfig",
    "PolicyConfig", "SvidConfig", "dev_config", "load", "node_name", "parse", "resolve_path",
    "to_toml",
]

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


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def jwks_url_problem(url: str) -> str | None:
    """Why `url` may not be fetched for an issuer's keys, or None: https to a named host, or
    plain http to this machine's loopback only (the host parsed, never matched as a prefix:
    `http://127.0.0.1.evil.example/` and `http://127.0.0.1@evil.example/` are other hosts)."""
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in url):
        return "must not hold whitespace, control characters or backslashes"
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a port that is not a number in range raises
    except ValueError as e:
        return f"not a valid URL ({e})"
    if parts.username is not None or parts.password is not None:
        return "must not carry user information (user@host)"
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return None
    return "must be https, or http to 127.0.0.1, ::1 or localhost"


class DelegationIssuer(StrictModel):
    issuer: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    audience: str = "ensign"

    @field_validator("jwks_url")
    @classmethod
    def _fetchable(cls, v: str | None) -> str | None:
        problem = None if v is None else jwks_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v

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
    trust_domain: TrustDomainName = "example.org"
    socket_path: Path = Path("/run/ensign/agent.sock")
    admin_socket_path: Path = Path("/run/ensign/admin.sock")
    data_dir: Path = Path("/var/lib/ensign")
    # Members of this group may use the admin socket (0660 root:group) when the group exists;
    # otherwise only root and the daemon's own uid (0600).
    admin_group: str = "ensign"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # This node's name: in its SPIFFE ID (spiffe://<td>/ensign/node/<node_name>) and, in a
    # fleet, its database role and rows. Default: the host name (`node_name()` decides).
    node_name: str = ""
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
    fleet: FleetConfig = Field(default_factory=FleetConfig)

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, v: str) -> str:
        return check_node_name(v)

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
        if self.node_name and self.http.node_name and self.node_name != self.http.node_name:
            raise ValueError("node_name and http.node_name (its former spelling) differ: keep "
                             "the top-level node_name only")
        return self


def node_name(config: Config) -> str:
    """This node's name (its SPIFFE ID's last segment; in a fleet its database role and rows):
    `node_name`, else `[http] node_name` (the former spelling), else the host name's first
    label. The one place that reads it."""
    if config.node_name or config.http.node_name:
        return config.node_name or config.http.node_name
    name = socket.gethostname().split(".")[0]
    return name if NODE_NAME.match(name) else "node"


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
