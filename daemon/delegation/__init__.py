"""Delegation: an agent acting for a human (or another agent) exchanges the delegator's token
for a delegated token naming both (RFC 8693 `act`).

`rules.decide` is the whole policy (pure); `TokenExchange` runs one exchange for any transport
(gRPC, HTTPS); `tokens` mints and verifies delegated tokens; `DelegationKeys` is the key set that
signs them (never the CA's JWT-SVID keys); `TrustedIssuers` holds the IdPs' keys.
"""

from typing import TYPE_CHECKING

from ensign.daemon.delegation.idp import SubjectTokenInvalid, TrustedIssuers, parse_jwks
from ensign.daemon.delegation.introspect import INACTIVE, Introspector, introspecting_roles
from ensign.daemon.delegation.rules import (
    Decision,
    DelegationDenied,
    Delegator,
    OAuthError,
    Request,
    decide,
    may_act_names,
)
from ensign.daemon.delegation.signing import ALGORITHMS, DelegationKeys, SigningKey, thumbprint
from ensign.daemon.delegation.tokens import (
    ISSUED_TOKEN_TYPE,
    TOKEN_TYPE,
    TOKEN_TYPES,
    DelegatedToken,
    check_binding,
    is_delegated_type,
    verify_delegated,
    x5t_s256,
)

if TYPE_CHECKING:
    from ensign.daemon.delegation.exchange import (
        ExchangeRequest,
        Issued,
        Presenter,
        TokenExchange,
        issuer_names,
        our_issuer,
    )
else:  # the exchange (audit log, CA, registry) on first use (ensign.daemon.lazy): `ensign token
    # verify` needs only the tokens
    from ensign.daemon.lazy import lazy

    __getattr__ = lazy(__name__, {
        ".exchange": ("ExchangeRequest", "Issued", "Presenter", "TokenExchange", "issuer_names",
                      "our_issuer"),
    })

__all__ = [
    "ALGORITHMS",
    "INACTIVE",
    "ISSUED_TOKEN_TYPE",
    "TOKEN_TYPE",
    "TOKEN_TYPES",
    "Decision",
    "DelegatedToken",
    "DelegationDenied",
    "DelegationKeys",
    "Delegator",
    "ExchangeRequest",
    "Introspector",
    "Issued",
    "OAuthError",
    "Presenter",
    "Request",
    "SigningKey",
    "SubjectTokenInvalid",
    "TokenExchange",
    "TrustedIssuers",
    "check_binding",
    "decide",
    "introspecting_roles",
    "is_delegated_type",
    "issuer_names",
    "may_act_names",
    "our_issuer",
    "parse_jwks",
    "thumbprint",
    "verify_delegated",
    "x5t_s256",
]
