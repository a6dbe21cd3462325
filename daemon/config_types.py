"""Building blocks for config models: a strict frozen base and the Duration, Size and
TrustDomainName types.

Kept apart from config.py so attestor modules can define their own config section without
importing the whole config (which imports them).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from ensign.daemon.errors import InvalidRequest
from ensign.daemon.spiffe_id import validate_trust_domain
from ensign.daemon.units import format_duration, format_size, parse_duration, parse_size


class StrictModel(BaseModel):
    """Frozen, and unknown keys are errors: a typo in the config must never be ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as 30s, 5m, 1h or 7d")
    if isinstance(value, int | float):
        raise ValueError(f"a duration needs a unit: write {value}s, not {value}")
    return value


def _size(value: Any) -> Any:
    if isinstance(value, str):
        return parse_size(value)
    if isinstance(value, bool):
        raise ValueError("a size is a string such as 512MiB or 1GiB, or a number of bytes")
    return value


Duration = Annotated[
    timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)
]
Size = Annotated[int, BeforeValidator(_size), PlainSerializer(format_size, return_type=str)]


def _trust_domain(v: str) -> str:
    try:
        return validate_trust_domain(v)
    except InvalidRequest as e:
        raise ValueError(str(e)) from None


# A trust domain name as SPIFFE allows it (lowercase letters, digits, `.-_`), normalised.
TrustDomainName = Annotated[str, AfterValidator(_trust_domain)]
