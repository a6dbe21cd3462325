"""SPIFFE federation: this trust domain's bundle as the bundle endpoint serves it, and the
bundles of federated trust domains, fetched in the background from their bundle endpoints.

`bundle` encodes and parses SPIFFE bundles (pure); `ServedBundle` numbers ours; the `fetch`
module reads a bundle endpoint (https_web or https_spiffe) with aiohttp, imported only once a
trust domain is federated with; `FederatedBundles` keeps the fetched bundles across restarts and
failures. Imports only the core and observe: the api layer hands these bundles to
workloads and serves ours.
"""

from ensign.daemon.federation.bundle import (
    JWT_USE,
    MAX_BUNDLE_BYTES,
    X509_USE,
    BundleError,
    TrustBundle,
    encode,
    parse,
    parse_any,
)
from ensign.daemon.federation.served import ServedBundle
from ensign.daemon.federation.store import FederatedBundles

__all__ = [
    "JWT_USE", "MAX_BUNDLE_BYTES", "X509_USE", "BundleError", "FederatedBundles", "ServedBundle",
    "TrustBundle", "encode", "parse", "parse_any",
]
