"""SPIFFE IDs and trust domains as value types (SPIFFE-ID.md). Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ensign.daemon.errors import InvalidRequest

MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
_TD_CHARS = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")


def validate_trust_domain(name: str) -> str:
    """Return the trust domain name, or raise InvalidRequest saying which rule it breaks."""
    if not name:
        raise InvalidRequest("trust domain is empty")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidRequest(f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if not _TD_CHARS.match(name):
        raise InvalidRequest(
            f"trust domain {name!r} may only hold lowercase letters, digits, '.', '-' and '_'"
        )
    return name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" for a trust domain's own ID, else "/seg/seg"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        # surrogatepass: "\udcff" from JSON (a token's sub) is refused below, not a crash here.
        if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
            raise InvalidRequest(f"SPIFFE ID longer than {MAX_ID_BYTES} bytes")
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() != "spiffe":
            raise InvalidRequest(f"invalid SPIFFE ID {text!r}: scheme must be spiffe://")
        if any(c in rest for c in "?#%"):
            raise InvalidRequest(f"invalid SPIFFE ID {text!r}: no query, fragment or escapes")
        td, slash, path = rest.partition("/")
        if "@" in td or ":" in td:
            raise InvalidRequest(f"invalid SPIFFE ID {text!r}: no user info or port")
        try:
            validate_trust_domain(td.lower())
        except InvalidRequest as e:
            raise InvalidRequest(f"invalid SPIFFE ID {text!r}: {e}") from None
        if slash:
            for seg in path.split("/"):
                if seg in ("", ".", ".."):
                    raise InvalidRequest(
                        f"invalid SPIFFE ID {text!r}: empty, '.' or '..' path segment"
                    )
                if not _SEGMENT_CHARS.match(seg):
                    raise InvalidRequest(
                        f"invalid SPIFFE ID {text!r}: path segments may only hold "
                        "letters, digits, '.', '-' and '_'"
                    )
            return cls(td.lower(), "/" + path)
        return cls(td.lower(), "")

    @classmethod
    def for_trust_domain(cls, trust_domain: str) -> SpiffeId:
        return cls(validate_trust_domain(trust_domain), "")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain

    @property
    def is_workload(self) -> bool:
        """Leaf SVIDs need a non-root path; a trust domain's own ID is for signing certs."""
        return bool(self.path)
