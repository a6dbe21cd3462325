"""Delegation: an agent acting for a human (or another agent) exchanges the delegator's token
for a delegated token naming both (RFC 8693 `act`).

`rules.decide` is the whole policy (pure); `TokenExchange` runs one exchange for any transport;
`tokens` mints and verifies delegated tokens; `TrustedIssuers` holds the IdPs' keys.
"""

from ensign.daemon.delegation.exchange import (
    ExchangeRequest,
    Issued,
    TokenExchange,
    our_issuer,
)
from ensign.daemon.delegation.idp import SubjectTokenInvalid, TrustedIssuers, parse_jwks
from ensign.daemon.delegation.rules import (
    Decision,
    DelegationDenied,
    Delegator,
    Request,
    decide,
    may_act_names,
)
from ensign.daemon.delegation.tokens import (
    ISSUED_TOKEN_TYPE,
    TOKEN_TYPE,
    DelegatedToken,
    verify_delegated,
    x5t_s256,
)

__all__ = [
    "ISSUED_TOKEN_TYPE", "TOKEN_TYPE", "Decision", "DelegatedToken", "DelegationDenied",
    "Delegator", "ExchangeRequest", "Issued", "Request", "SubjectTokenInvalid", "TokenExchange",
    "TrustedIssuers", "decide", "may_act_names", "our_issuer", "parse_jwks", "verify_delegated",
    "x5t_s256",
]
