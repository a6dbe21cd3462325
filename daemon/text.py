"""Text that came from bytes (paths, cgroup names, command lines) made safe to record. Pure.

The kernel hands out bytes; Python turns those that are not UTF-8 into lone surrogates
(`os.fsdecode`, `os.readlink`), which no UTF-8 encoder accepts: one such string in an audit
record would make the record impossible to write. `escape()` renders such a string as valid
text, reversibly: a byte that is not UTF-8 becomes `\\xHH`, a control character `\\xHH` too,
any other lone surrogate `\\uHHHH`, and a literal backslash `\\\\`. Ordinary text without a
backslash or control character comes back unchanged, and `unescape()` gives back the original.
"""

from __future__ import annotations

import re
from typing import Any

# What escape() rewrites: backslash, C0 controls and DEL, and every lone surrogate.
_SPECIAL = re.compile("[\\\\\x00-\x1f\x7f\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(?:\\|x([0-9a-f]{2})|u([0-9a-f]{4}))")


def _one(m: re.Match[str]) -> str:
    c = m.group()
    if c == "\\":
        return "\\\\"
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # surrogateescape: the raw byte n - 0xDC00
        return f"\\x{n - 0xDC00:02x}"
    if n < 0x80:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}"


def escape(s: str) -> str:
    """`s` as text any UTF-8 encoder takes, reversibly (see the module's doc)."""
    if _SPECIAL.search(s) is None:
        return s
    return _SPECIAL.sub(_one, s)


def _back(m: re.Match[str]) -> str:
    if m.group(1) is not None:
        n = int(m.group(1), 16)
        return chr(n) if n < 0x80 else chr(0xDC00 + n)
    if m.group(2) is not None:
        return chr(int(m.group(2), 16))
    return "\\"


def unescape(s: str) -> str:
    """The inverse of escape(): `unescape(escape(s)) == s` for every str `s`."""
    return _ESCAPED.sub(_back, s) if "\\" in s else s


def from_bytes(raw: bytes) -> str:
    """Bytes from the kernel (a path, a cgroup, an argument) as escaped text."""
    return escape(raw.decode("utf-8", "surrogateescape"))


def encodable(s: str) -> bool:
    """True when `s` encodes as UTF-8 (holds no lone surrogate)."""
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def escape_tree(value: Any) -> Any:
    """Every string in a JSON-like value (keys too) passed through escape()."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escape_tree(k): escape_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_tree(v) for v in value]
    return value
