"""The declarative registry file (`ensign agent apply -f FILE`): TOML or YAML, strictly checked.

A file that cannot be read exits 66; one whose content is wrong exits 65, naming the key.
`expires_at` is an RFC 3339 time or a duration (`"30d"`): a duration counts from the agent's
registration, so applying the same file again changes nothing.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ensign.daemon.config_types import Duration, StrictModel
from ensign.daemon.errors import InvalidData, NotFound
from ensign.daemon.units import MAX_TTL_SECONDS, parse_duration
from ensign.proto import admin_pb2 as pb


class RoleDoc(StrictModel):
    name: str
    audiences: list[str]
    scopes: list[str] = Field(default_factory=list)
    max_ttl: Duration = timedelta(0)
    may_act_for_users: bool = False
    may_redelegate: bool = False
    may_introspect: bool = False


class AgentDoc(StrictModel):
    name: str
    id: str = ""
    kind: Literal["agent", "service"] = "agent"
    spiffe_id: str = ""
    owner: str = ""
    purpose: str = ""
    selectors: list[str]
    capabilities: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    x509_ttl: Duration = timedelta(0)
    jwt_ttl: Duration = timedelta(0)
    dns_names: list[str] = Field(default_factory=list)
    hint: str = ""
    federates_with: list[str] = Field(default_factory=list)
    expires_at: datetime | timedelta | None = None
    state: Literal["active", "suspended", "decommissioned"] = "active"

    @field_validator("expires_at", mode="before")
    @classmethod
    def _time_or_duration(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                d = parse_duration(v)
            except ValueError:
                return v  # an RFC 3339 time, parsed below
            if not timedelta(seconds=1) <= d <= timedelta(seconds=MAX_TTL_SECONDS):
                raise ValueError("a duration between 1s and 3650d")
            return d
        return v

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, v: datetime | timedelta | None) -> datetime | timedelta | None:
        if isinstance(v, datetime) and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v


class RegistryDoc(StrictModel):
    role: list[RoleDoc] = Field(default_factory=list)
    agent: list[AgentDoc] = Field(default_factory=list)


def load(path: Path) -> RegistryDoc:
    try:
        text = path.read_text()
    except OSError as e:
        raise NotFound(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidData(f"{path}: not UTF-8 text") from None
    data: Any
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise InvalidData(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InvalidData(f"{path}: not valid TOML: {e}") from None
    try:
        return RegistryDoc.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg.removeprefix('Value error, ')}")
        raise InvalidData(f"{path}: " + "; ".join(problems)) from None


def to_request(doc: RegistryDoc, *, dry_run: bool, prune: bool) -> pb.ApplyRequest:
    return pb.ApplyRequest(
        dry_run=dry_run,
        prune=prune,
        roles=[pb.Role(name=r.name, audiences=r.audiences, scopes=r.scopes,
                       max_ttl_seconds=int(r.max_ttl.total_seconds()),
                       may_act_for_users=r.may_act_for_users, may_redelegate=r.may_redelegate,
                       may_introspect=r.may_introspect)
               for r in doc.role],
        agents=[pb.DesiredAgent(
            id=a.id, state=a.state,
            spec=pb.AgentSpec(
                name=a.name, kind=a.kind, spiffe_id=a.spiffe_id, selectors=a.selectors,
                owner=a.owner, purpose=a.purpose, capabilities=a.capabilities, roles=a.roles,
                metadata=a.metadata, x509_ttl_seconds=int(a.x509_ttl.total_seconds()),
                jwt_ttl_seconds=int(a.jwt_ttl.total_seconds()), dns_names=a.dns_names,
                hint=a.hint, federates_with=a.federates_with,
                expires_at=int(a.expires_at.timestamp()) if isinstance(a.expires_at, datetime)
                else 0,
                expires_after_seconds=int(a.expires_at.total_seconds())
                if isinstance(a.expires_at, timedelta) else 0,
            ),
        ) for a in doc.agent],
    )
