"""Golden PCR values: the boot states a node may be in and still be trusted. Pure.

File format (JSON), one or more accepted values per PCR of the sha256 bank:

    {"bank": "sha256",
     "pcrs": {"0": "3d45...", "7": ["a1b2...", "c3d4..."]}}

`ensign tpm policy -o FILE` writes the node's current values in this format, to be reviewed
and kept with the node's configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensign.daemon.errors import ConfigError

BANK = "sha256"


@dataclass(frozen=True, slots=True)
class Mismatch:
    pcr: int
    actual: bytes | None
    expected: tuple[bytes, ...]

    def __str__(self) -> str:
        got = self.actual.hex() if self.actual is not None else "not quoted"
        want = " or ".join(e.hex() for e in self.expected)
        return f"PCR {self.pcr} is {got}, policy wants {want}"


@dataclass(frozen=True, slots=True)
class PcrPolicy:
    values: Mapping[int, tuple[bytes, ...]]
    source: str = "policy"

    @property
    def pcrs(self) -> list[int]:
        return sorted(self.values)

    def check(self, actual: Mapping[int, bytes]) -> list[Mismatch]:
        """Every PCR the policy names must hold one of its accepted values."""
        return [Mismatch(i, actual.get(i), want) for i, want in sorted(self.values.items())
                if actual.get(i) not in want]

    @classmethod
    def parse(cls, doc: Any, source: str = "policy") -> PcrPolicy:
        if not isinstance(doc, dict) or not isinstance(doc.get("pcrs"), dict):
            raise ConfigError(f"{source}: a PCR policy is an object with a \"pcrs\" object")
        if doc.get("bank", BANK) != BANK:
            raise ConfigError(f"{source}: bank {doc.get('bank')!r} is not supported (sha256)")
        values: dict[int, tuple[bytes, ...]] = {}
        for key, v in doc["pcrs"].items():
            try:
                index = int(key)
            except ValueError:
                raise ConfigError(f"{source}: pcrs.{key}: not a PCR index") from None
            if not 0 <= index <= 23:
                raise ConfigError(f"{source}: pcrs.{key}: a PCR index is 0..23")
            accepted = [v] if isinstance(v, str) else v
            if not isinstance(accepted, list) or not accepted:
                raise ConfigError(f"{source}: pcrs.{key}: a hex value or a list of them")
            try:
                decoded = tuple(bytes.fromhex(a) for a in accepted)
            except (ValueError, TypeError):
                raise ConfigError(f"{source}: pcrs.{key}: values must be hex strings") from None
            if any(len(d) != 32 for d in decoded):
                raise ConfigError(f"{source}: pcrs.{key}: sha256 values are 32 bytes")
            values[index] = decoded
        if not values:
            raise ConfigError(f"{source}: the policy names no PCR")
        return cls(values, source)

    @classmethod
    def load(cls, path: Path) -> PcrPolicy:
        try:
            doc = json.loads(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read PCR policy: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError(f"{path}: PCR policy is not valid JSON: {e}") from None
        return cls.parse(doc, str(path))

    @staticmethod
    def document(values: Mapping[int, bytes]) -> dict[str, Any]:
        """The policy file that accepts exactly these values."""
        return {"bank": BANK, "pcrs": {str(i): v.hex() for i, v in sorted(values.items())}}
