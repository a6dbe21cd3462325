"""Durations (`30s 5m 1h 7d`) and sizes (`512MiB 1GiB`) as the config and CLI write them."""

from __future__ import annotations

import re
from datetime import timedelta

# The longest TTL anything may ask for (the config's bound too): beyond it timedelta overflows
# long before a certificate could, and no credential should outlive a decade.
MAX_TTL_SECONDS = 3650 * 86400
# The last second datetime can hold: later expiry times cannot even be printed.
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}


def parse_duration(text: str) -> timedelta:
    """Parse `90s`, `5m`, `1h`, `7d` (also `500ms`). Raises ValueError with the accepted forms."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit, e.g. 30s, 5m, 1h, 7d"
        )
    try:
        return timedelta(seconds=int(m.group(1)) * _DURATION_UNITS[m.group(2)])
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    for unit in ("d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if unit == "d" and seconds <= 2 * 86400:
            continue  # "24h" reads better than "1d"
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def parse_size(text: str) -> int:
    """Parse `512MiB`, `1GiB`, `4096` (bytes). Raises ValueError with the accepted forms."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: use a number and a unit, e.g. 512MiB, 1GiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def format_size(value: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        size = _SIZE_UNITS[unit]
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)
