"""`ensign.delegation.v1.Delegation/ExchangeToken`: the gRPC face of delegation.exchange.

The front has found and attested the caller; it must hold an identity of kind `agent` (TPM
node selectors included, like every identity). The exchange itself (rules, minting, audit) is
`TokenExchange`, shared with the HTTPS token endpoint.
"""

from __future__ import annotations

import json

from grpclib.server import Stream

from ensign.daemon.api.front import Call, recv
from ensign.daemon.delegation import (
    DelegationDenied,
    DelegationKeys,
    ExchangeRequest,
    Presenter,
    TokenExchange,
)
from ensign.daemon.errors import NoIdentity
from ensign.daemon.registry import Entry
from ensign.proto import delegation_pb2 as pb


class DelegationApi:
    def __init__(self, exchange: TokenExchange, keys: DelegationKeys) -> None:
        self._exchange = exchange
        self._keys = keys

    async def TokenKeys(
        self, stream: Stream[pb.TokenKeysRequest, pb.TokenKeysResponse], call: Call
    ) -> None:
        """Public keys: any caller past the front may read them (jwks_uri serves them too)."""
        await recv(stream)
        await stream.send_message(pb.TokenKeysResponse(
            jwks=json.dumps(self._keys.public_jwks(), separators=(",", ":")).encode(),
            issuer=self._exchange.issuer))

    async def ExchangeToken(
        self, stream: Stream[pb.ExchangeTokenRequest, pb.ExchangeTokenResponse], call: Call
    ) -> None:
        request = await recv(stream)
        attested = await call.attested()
        agent = call.entry = _agent(call)
        call.recorded = True  # from here on the exchange writes its own token.exchanged record
        issued = await self._exchange.exchange(
            agent, Presenter.local(attested), ExchangeRequest(
            subject_token=request.subject_token, subject_token_type=request.subject_token_type,
            audience=request.audience, scopes=tuple(request.scopes),
            requested_ttl_seconds=request.requested_ttl_seconds,
            allow_narrowing=request.allow_narrowing))
        await stream.send_message(pb.ExchangeTokenResponse(
            access_token=issued.access_token, issued_token_type=issued.issued_token_type,
            token_type=issued.token_type, expires_in=issued.expires_in,
            scopes=list(issued.scopes)))


def _agent(call: Call) -> Entry:
    """The caller's identity of kind agent: services do not act for users."""
    try:
        agents = [e for e in call.identities() if e.kind == "agent"]
    except NoIdentity:
        agents = []
    if not agents:
        raise DelegationDenied(f"caller (pid {call.caller.pid}) is not a registered, "
                               "active agent", "unauthorized_client")
    return agents[0]
