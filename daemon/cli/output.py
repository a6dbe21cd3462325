"""The output half of the CLI's conventions (see `common`): JSON for scripts, text for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ensign.daemon.units import MAX_TIMESTAMP, format_duration


def print_json(value: Any) -> None:
    # One write: json.dump() would write every token separately (900k writes for 10k agents).
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def fmt_time(ts: int | float | None) -> str:
    """RFC 3339 UTC for people; `-` when unset (0)."""
    return json_time(ts) or "-"


def json_time(ts: int | float | None) -> str | None:
    """RFC 3339 UTC for scripts; None when unset (0) or out of range."""
    if not ts or not 0 < ts <= MAX_TIMESTAMP:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def fmt_duration(seconds: int | float, unset: str = "-") -> str:
    """`30d`, `1h`, `90s`; `unset` for 0."""
    return format_duration(timedelta(seconds=seconds)) if seconds else unset


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A header and rows, each column as wide as its widest value (the last is not padded)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    sys.stdout.write("\n".join(lines) + "\n")


def print_fields(rows: Sequence[tuple[str, object]]) -> None:
    """`key  value` lines, the values aligned."""
    width = max((len(k) for k, _ in rows), default=0)
    sys.stdout.write("".join(f"{k.ljust(width)}  {v}\n" for k, v in rows))


_INT64 = {3, 4, 16, 18, 6}  # FieldDescriptor types int64/uint64/sint64/sfixed64/fixed64
_PLANS: dict[Any, list[tuple[str, str, Any]]] = {}


def _plan(descriptor: Any, times: frozenset[str]) -> list[tuple[str, str, Any]]:
    key = (descriptor, times)
    plan = _PLANS.get(key)
    if plan is None:
        plan = []
        for f in descriptor.fields:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                kind = "map"
            elif f.is_repeated:
                kind = "messages" if f.message_type is not None else "list"
            elif f.message_type is not None:
                kind = "message"
            elif f.type in _INT64 and (f.name == "at" or f.name.endswith("_at")
                                       or f.name in times):
                kind = "time"
            else:
                kind = "value"
            plan.append((f.name, kind, f))
        _PLANS[key] = plan
    return plan


def message_json(msg: Any, *, times: Iterable[str] = (), drop: Iterable[str] = ()
                 ) -> dict[str, Any]:
    """An admin message as JSON: field names kept, unset fields printed, int64 `*_at` fields
    (and `times`) as RFC 3339 or null, other numbers as numbers. Fast: `agent list -o json`
    over 10,000 agents spends its time here."""
    skip, when = frozenset(drop), frozenset(times)
    out: dict[str, Any] = {}
    for name, kind, _ in _plan(msg.DESCRIPTOR, when):
        if name in skip:
            continue
        value = getattr(msg, name)
        if kind == "value":
            out[name] = value
        elif kind == "time":
            out[name] = json_time(value)
        elif kind == "list":
            out[name] = list(value)
        elif kind == "map":
            out[name] = dict(value)
        elif kind == "messages":
            out[name] = [message_json(v, times=when) for v in value]
        elif msg.HasField(name):
            out[name] = message_json(value, times=when)
    return out


def plain_numbers(value: Any) -> Any:
    """JSON from protobuf Structs has only floats: whole ones become ints (`exp`, `iat`)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_numbers(v) for v in value]
    return value


# Older names, kept so commands written against them keep working (same convention).
iso = fmt_time
proto_dict = message_json
