"""The local Workload API as a resource server uses it: where the socket is, and the JWT bundles
(this trust domain's JWT-SVID keys, and those of trust domains the caller federates with), kept
current by one FetchJWTBundles stream in the background.

The last bundle received stays in use while the daemon is away (restart, upgrade): tokens keep
verifying against it, and the stream reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import jwt
from grpclib.client import Channel

from ensign.proto import workload_pb2 as pb
from ensign.proto.workload_grpc import SpiffeWorkloadAPIStub

log = logging.getLogger("ensign.sdk")

HEADER = {"workload.spiffe.io": "true"}
DEFAULT_SOCKET = "/run/ensign/agent.sock"
FIRST_BUNDLE_TIMEOUT = 5.0
BACKOFF = (0.5, 30.0)


def socket_path(endpoint: str | None = None) -> str:
    """`endpoint`, else $SPIFFE_ENDPOINT_SOCKET, else the default; `unix:///path` or a path."""
    value = endpoint or os.environ.get("SPIFFE_ENDPOINT_SOCKET") or DEFAULT_SOCKET
    for prefix in ("unix://", "unix:"):
        if value.startswith(prefix):
            value = value[len(prefix):]
            break
    if not value.startswith("/"):
        raise ValueError(f"Workload API socket must be an absolute path or unix:///path, "
                         f"not {value!r}")
    return value


def parse_jwks(data: bytes) -> dict[str, Any]:
    """kid -> public key of a JWK Set (JSON bytes)."""
    doc = json.loads(data)
    return jwks_keys(doc if isinstance(doc, dict) else {})


def jwks_keys(doc: Mapping[str, Any]) -> dict[str, Any]:
    """kid -> public key of a JWK Set; keys without a kid or of unknown types are skipped."""
    out: dict[str, Any] = {}
    keys = doc.get("keys")
    for k in keys if isinstance(keys, list) else []:
        if not isinstance(k, dict) or not isinstance(k.get("kid"), str):
            continue
        try:
            out[k["kid"]] = jwt.PyJWK.from_dict(k).key
        except (jwt.PyJWTError, ValueError, KeyError):
            continue
    return out


class JwtBundles:
    """JWT-SVID keys by trust domain, from the Workload API. Used from one event loop."""

    def __init__(self, socket: str | None = None) -> None:
        self._socket = socket_path(socket)
        self._bundles: dict[str, dict[str, Any]] = {}
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # set by the first bundle or the first failure: a caller never waits on a daemon that
        # is known to be away (the request is answered 503 at once, not after a timeout)
        self._settled = asyncio.Event()

    async def keys(self, trust_domain: str) -> Mapping[str, Any] | None:
        """The trust domain's keys; None if the Workload API does not give us its bundle.
        Waits (up to FIRST_BUNDLE_TIMEOUT) for the first bundle; raises TimeoutError if none
        came (the daemon is not running: then at once, until a bundle arrives)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._follow())
        if not self._first.is_set():
            await asyncio.wait_for(self._settled.wait(), FIRST_BUNDLE_TIMEOUT)
            if not self._first.is_set():
                raise TimeoutError("no JWT bundle yet: the Workload API is not answering")
        return self._bundles.get(trust_domain)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                channel = Channel(path=self._socket)
                try:
                    async with SpiffeWorkloadAPIStub(channel).FetchJWTBundles.open(
                            metadata=HEADER) as stream:
                        await stream.send_message(pb.JWTBundlesRequest(), end=True)
                        async for resp in stream:
                            self._bundles = {_td(k): parse_jwks(v)
                                             for k, v in resp.bundles.items()}
                            self._first.set()
                            self._settled.set()
                            delay = BACKOFF[0]
                finally:
                    channel.close()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the daemon is away: keep the last bundle, retry
                self._settled.set()
                log.warning("Workload API JWT bundle stream failed (%s); retrying",
                            f"{type(e).__name__}: {e}"[:300])
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter)
            delay = min(delay * 2, BACKOFF[1])


def _td(key: str) -> str:
    return key[len("spiffe://"):] if key.startswith("spiffe://") else key
