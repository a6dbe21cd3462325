"""Issuing: the node's CA (rotation, upstream and offline-signed CAs), SVID minting, the JWT-SVID
validator, and the SVID cache that streams wait on.

Minting and validation (`svid`, `jwt_svid`) are pure; `CertificateAuthority` keeps its state
under data_dir/ca; `SvidCache` re-mints at half life and `Broadcast` wakes streams on changes.
"""

from typing import TYPE_CHECKING

from ensign.daemon.issuing.svid import (
    SigningAuthority,
    X509Svid,
    load_der_chain,
    mint_x509_svid,
    split_der,
)

if TYPE_CHECKING:
    from ensign.daemon.issuing.ca import (
        Authority,
        CertificateAuthority,
        Upstream,
        new_authority,
        utcnow,
    )
    from ensign.daemon.issuing.ca_offline import install_signed, request_csr
    from ensign.daemon.issuing.cache import Broadcast, SvidCache
    from ensign.daemon.issuing.jwt_svid import (
        JWT_SVID_ALGORITHMS,
        AudienceMismatch,
        HolderInactive,
        JwtSvid,
        jwks,
        mint_jwt_svid,
        validate_jwt_svid,
    )
else:  # the CA (config, files) and JWT-SVIDs (PyJWT) on first use (ensign.daemon.lazy): the
    # CLI reads X.509 chains only
    from ensign.daemon.lazy import lazy

    __getattr__ = lazy(__name__, {
        ".ca": ("Authority", "CertificateAuthority", "Upstream", "new_authority", "utcnow"),
        ".ca_offline": ("install_signed", "request_csr"),
        ".cache": ("Broadcast", "SvidCache"),
        ".jwt_svid": ("JWT_SVID_ALGORITHMS", "AudienceMismatch", "HolderInactive", "JwtSvid",
                      "jwks", "mint_jwt_svid", "validate_jwt_svid"),
    })

__all__ = [
    "JWT_SVID_ALGORITHMS",
    "AudienceMismatch",
    "Authority",
    "Broadcast",
    "CertificateAuthority",
    "HolderInactive",
    "JwtSvid",
    "SigningAuthority",
    "SvidCache",
    "Upstream",
    "X509Svid",
    "install_signed",
    "jwks",
    "load_der_chain",
    "mint_jwt_svid",
    "mint_x509_svid",
    "new_authority",
    "request_csr",
    "split_der",
    "utcnow",
    "validate_jwt_svid",
]
