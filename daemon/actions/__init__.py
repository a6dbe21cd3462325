"""Agent actions in the audit trail: what an agent did with a token, attributed by Ensign.

A reporter (a resource server, an agent, a script) names the token an action was done with;
`TokenCheck` says whether this trust domain issued it, `IssuanceIndex` holds Ensign's own
issuance records by `jti` (fed by the audit log as it writes, rebuilt from the segments at
start), `FleetIssuances` finds in the fleet database the issuance record of a token another node
issued, and `ActionRecorder` builds the `action` audit record from them, with the reporter's
words kept apart from the attribution. `checked` validates what the reporter sent.
"""

from typing import TYPE_CHECKING

from ensign.daemon.actions.detail import (
    MAX_DETAIL_BYTES,
    OUTCOMES,
    Outcome,
    Reported,
    checked,
    parse_detail,
)

if TYPE_CHECKING:
    from ensign.daemon.actions.index import (
        KEEP_AFTER_EXPIRY,
        Attribution,
        IssuanceIndex,
        entry_of,
    )
    from ensign.daemon.actions.recorder import ActionRecorder, Reporter
    from ensign.daemon.actions.remote import FleetIssuances, Remote
    from ensign.daemon.actions.tokens import Checked, TokenCheck
else:  # the daemon's parts on first use (ensign.daemon.lazy): `ensign action` needs `detail`
    from ensign.daemon.lazy import lazy

    __getattr__ = lazy(__name__, {
        ".index": ("KEEP_AFTER_EXPIRY", "Attribution", "IssuanceIndex", "entry_of"),
        ".recorder": ("ActionRecorder", "Reporter"),
        ".remote": ("FleetIssuances", "Remote"),
        ".tokens": ("Checked", "TokenCheck"),
    })

__all__ = [
    "KEEP_AFTER_EXPIRY", "MAX_DETAIL_BYTES", "OUTCOMES", "ActionRecorder", "Attribution",
    "Checked", "FleetIssuances", "IssuanceIndex", "Outcome", "Remote", "Reported", "Reporter",
    "TokenCheck", "checked",
    "entry_of", "parse_detail",
]
