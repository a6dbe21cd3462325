"""ensign.sdk: what resource servers import to accept agents' tokens and report their actions.

- `EnsignMiddleware` (ASGI: Starlette, FastAPI): verifies delegated tokens from the issuer's
  metadata and JWT-SVIDs from the local Workload API, checks certificate binding over mTLS,
  sets the `Principal`, and reports each request to Ensign's audit trail as an action without
  holding the response.
- `TokenVerifier`, `IssuerKeys`, `JwtBundles`: the same verification without the middleware.
- `ActionReporter`: report actions from any asyncio program (bounded queue, never blocks).
- `ensign.sdk.starlette`: `principal(request)`, `require_scope(...)`, `describe(...)`
  (needs Starlette: `pip install ensign[sdk]`).

It talks to Ensign only through its public interfaces (the Workload API socket and the HTTPS
issuer), and imports nothing of the daemon's.
"""

from ensign.sdk.issuer import IssuerKeys
from ensign.sdk.middleware import EnsignMiddleware
from ensign.sdk.principal import InsufficientScope, KeysUnavailable, Principal, Unauthorized
from ensign.sdk.recorder import ActionReporter
from ensign.sdk.verify import TokenVerifier, x5t_s256
from ensign.sdk.workload import JwtBundles, socket_path

__all__ = [
    "ActionReporter", "EnsignMiddleware", "InsufficientScope", "IssuerKeys", "JwtBundles",
    "KeysUnavailable", "Principal", "TokenVerifier", "Unauthorized", "socket_path", "x5t_s256",
]
