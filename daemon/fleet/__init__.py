"""Many nodes, one registry and one audit trail, on PostgreSQL.

`Fleet` is one node's part: start checks (exit 78 on a bad URL, host, credential or schema), its
node row and heartbeat, publishing its JWT-SVID keys and serving the union of every node's
(`FleetKeys`), publishing its delegated-token keys and handing the other nodes' to the
delegation key set (`DelegationKeys.set_others`), the listener that keeps the registry copy
current (LISTEN/NOTIFY and a resync by version), audit shipping (`Shipper`), and reading another
node's shipped issuance attribution by jti (`issuance`, for action attribution). `schema` holds
the versioned migrations and roles (`ensign fleet init`); `report` reads the fleet for `ensign
fleet status` and `ensign audit list|verify --fleet`. The registry's rows are read and written
by `registry.PgStore`.
"""

from ensign.daemon.fleet.keys import DELEGATION, JWT_SVID, FleetKeys, PublishedKey
from ensign.daemon.fleet.schema import ADMIN_ROLE, NODE_ROLE, SCHEMA_VERSION, init
from ensign.daemon.fleet.service import Fleet
from ensign.daemon.fleet.ship import Shipper, issuance

__all__ = [
    "ADMIN_ROLE", "DELEGATION", "JWT_SVID", "NODE_ROLE", "SCHEMA_VERSION", "Fleet", "FleetKeys",
    "PublishedKey", "Shipper", "init", "issuance",
]
