"""`ensign helper`'s settings: a config file and the command line's flags over it.

Settings take spiffe-helper's key names (`cert_dir`, `svid_file_name`, `jwt_svids`, ...) so its
config files carry over (HCL's `key = value` lines read as TOML); unknown keys are errors.
Apart from the file writes (helper_files) because pydantic models cost every `ensign` call their
build time: only `ensign helper` imports this module.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from ensign.daemon.config_types import StrictModel
from ensign.daemon.errors import ConfigError

from .helper_files import plain_name


class JwtFile(StrictModel):
    jwt_audience: str = Field(min_length=1)
    jwt_extra_audiences: tuple[str, ...] = ()
    jwt_svid_file_name: str

    @field_validator("jwt_svid_file_name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)


class HelperSettings(StrictModel):
    """What to write where, and whom to tell. spiffe-helper's names and defaults."""

    agent_address: str = ""  # the Workload API socket; default $SPIFFE_ENDPOINT_SOCKET
    cert_dir: str = ""
    svid_file_name: str = "svid.pem"
    svid_key_file_name: str = "svid_key.pem"
    svid_bundle_file_name: str = "svid_bundle.pem"
    jwt_svids: tuple[JwtFile, ...] = ()
    jwt_bundle_file_name: str = ""  # the JWKS, when set
    add_intermediates_to_bundle: bool = False
    hint: str = ""  # pick the SVID with this hint instead of the first
    cert_file_mode: int = Field(default=0o644, ge=0, le=0o777)
    key_file_mode: int = Field(default=0o600, ge=0, le=0o777)
    jwt_svid_file_mode: int = Field(default=0o600, ge=0, le=0o777)
    jwt_bundle_file_mode: int = Field(default=0o600, ge=0, le=0o777)
    daemon_mode: bool = True  # False: write once and exit (--once)
    cmd: str = ""
    cmd_args: str = ""
    renew_signal: str = ""
    pid_file_name: str = ""

    @field_validator("svid_file_name", "svid_key_file_name", "svid_bundle_file_name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)

    @field_validator("jwt_bundle_file_name")
    @classmethod
    def _plain_or_empty(cls, v: str) -> str:
        return plain_name(v) if v else v


def load_settings(path: Path | None, overrides: dict[str, Any]) -> HelperSettings:
    """The config file (TOML), then the command line's flags over it."""
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return HelperSettings.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: "
            f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}"
            for err in e.errors())
        raise ConfigError(f"{source}: {problems}") from None
