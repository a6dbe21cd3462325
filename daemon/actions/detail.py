"""What a reporter sends, checked before anything is recorded: every byte is the caller's.

`checked()` turns the wire fields into a `Reported` or raises InvalidRequest naming the field.
The optional `detail` is a JSON object of at most 4 KiB; it lands in the record as the reporter's
words (under `details.detail`), so it must fit the audit trail's canonical encoding: no floats,
no NaN or Infinity, integers within ±2**53, no duplicate keys, no lone surrogates, at most 8
levels deep. Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from ensign.daemon.errors import InvalidRequest

Outcome = Literal["success", "failure", "denied"]
OUTCOMES: tuple[Outcome, ...] = ("success", "failure", "denied")
MAX_TOKEN_BYTES = 16 * 1024
MAX_ACTION_BYTES = 256
MAX_RESOURCE_BYTES = 2048
MAX_DETAIL_BYTES = 4096
MAX_DEPTH = 8
MAX_SAFE_INT = 2**53 - 1  # what every JSON reader holds exactly (RFC 8785 numbers)


@dataclass(frozen=True, slots=True)
class Reported:
    """One action as its reporter described it, checked for shape (not for truth)."""

    token: str
    action: str
    resource: str
    outcome: Outcome
    detail: dict[str, Any] = field(default_factory=dict)


def checked(token: str, action: str, resource: str, outcome: str, detail: str) -> Reported:
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise InvalidRequest(f"token longer than {MAX_TOKEN_BYTES} bytes")
    _text("action", action, MAX_ACTION_BYTES)
    _text("resource", resource, MAX_RESOURCE_BYTES)
    if outcome not in OUTCOMES:
        raise InvalidRequest(f"outcome must be one of {', '.join(OUTCOMES)}, "
                             f"not {outcome[:32]!r}")
    return Reported(token=token.strip(), action=action, resource=resource,
                    outcome=outcome, detail=parse_detail(detail))


def _text(name: str, value: str, limit: int) -> None:
    if not value.strip():
        raise InvalidRequest(f"{name} must be given")
    if len(value.encode()) > limit:
        raise InvalidRequest(f"{name} longer than {limit} bytes")


def parse_detail(text: str) -> dict[str, Any]:
    """The reporter's detail as a JSON object; {} when empty. InvalidRequest says why not."""
    if not text.strip():
        return {}
    if len(text.encode()) > MAX_DETAIL_BYTES:
        raise InvalidRequest(f"detail longer than {MAX_DETAIL_BYTES} bytes")
    try:
        value = json.loads(text, object_pairs_hook=_unique, parse_float=_no_float,
                           parse_constant=_no_constant)
    except _Refused as e:
        raise InvalidRequest(f"detail: {e}") from None
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(f"detail is not JSON: {str(e)[:120]}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("detail must be a JSON object")
    try:
        _walk(value, 1)
    except _Refused as e:
        raise InvalidRequest(f"detail: {e}") from None
    return value


class _Refused(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_float(text: str) -> NoReturn:
    raise _Refused(f"numbers must be integers (got {text[:32]}): the audit trail holds no floats")


def _no_constant(text: str) -> NoReturn:
    raise _Refused(f"{text} is not JSON")


def _walk(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            _string(key)
            _walk(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, depth + 1)
    elif isinstance(value, str):
        _string(value)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INT:
        raise _Refused(f"integer {str(value)[:24]} is outside ±2**53")


def _string(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise _Refused("a string holds a lone surrogate (\\ud800-\\udfff)") from None
