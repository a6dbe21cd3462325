"""The interface every attestor implements."""

from __future__ import annotations

from typing import ClassVar, Protocol

from ensign.daemon.models import Attestation, Caller


class AttestorError(Exception):
    """This attestor could not examine the caller. The pipeline drops its selectors."""


class Attestor(Protocol):
    #: "unix" | "systemd" | "sigstore" | "tpm": becomes the selector type prefix, so an
    #: attestor cannot emit selectors under another attestor's name.
    name: ClassVar[str]

    async def attest(self, caller: Caller) -> Attestation:
        """Return selector values like "uid:1000" and evidence; raise AttestorError on failure."""
        ...

    def state(self) -> str:
        """One line for `ensign status`: is this attestor able to vouch for callers now?"""
        ...

    async def aclose(self) -> None: ...


def value(*parts: object) -> str:
    """Join selector parts: value("uid", 1000) == "uid:1000"."""
    return ":".join(str(p) for p in parts)
