"""The HTTPS endpoint for resource servers and federation (`[http]`), on the daemon's loop.

aiohttp serves the routes (`HttpApi`): its request handler is a plain asyncio protocol factory,
so `HttpsListener` owns accept, limits and the TLS handshake, and each request's TLS object
gives the client's verified certificate (the mTLS identity). `ServerTls` keeps the serving
certificate current (configured files, or the node's own X.509-SVID) without a restart.
"""

from ensign.daemon.api.http.app import TOKEN_EXCHANGE, HttpApi
from ensign.daemon.api.http.listener import HttpsListener
from ensign.daemon.api.http.oauth import ClientCert, OAuthFailure, client_cert, from_error
from ensign.daemon.api.http.tls import ServerTls, node_spiffe_id

__all__ = [
    "TOKEN_EXCHANGE", "ClientCert", "HttpApi", "HttpsListener", "OAuthFailure", "ServerTls",
    "client_cert", "from_error", "node_spiffe_id",
]
