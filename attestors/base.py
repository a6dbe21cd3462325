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

    def problem(self) -> str | None:
        """Why this enabled attestor cannot vouch for any caller now (None: it can), naming
        the config key at fault (`trusted_root: cannot load ...`). `ensign config check` fails
        on it, and health reports NOT_SERVING while it lasts."""
        ...

    async def aclose(self) -> None: ...


def value(*parts: object) -> str:
    """Join selector parts: value("uid", 1000) == "uid:1000"."""
    return ":".join(str(p) for p in parts)
