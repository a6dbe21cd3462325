"""`ensign status` and `ensign log-level`: operator views over the admin socket."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ensign.proto import admin_pb2 as pb

from .common import TIMEOUT, admin_call, fmt_time, message_json, print_fields, print_json

Common = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
#: StatusResponse's int64 times that are not named *_at.
STATUS_TIMES = ("ca_not_after", "ca_next_event")


def register(sub: Any, common: Common) -> None:
    st = common(sub.add_parser("status", help="the daemon's state (admin socket)"))
    st.set_defaults(func=status)
    ll = common(sub.add_parser("log-level", help="read or set the log level at runtime"))
    ll.add_argument("level", nargs="?", default="",
                    choices=["", "debug", "info", "warning", "error"])
    ll.set_defaults(func=log_level)


async def status(args: argparse.Namespace) -> int:
    s = await admin_call(args, lambda stub: stub.GetStatus(pb.StatusRequest(), timeout=TIMEOUT))
    if args.output == "json":
        print_json(message_json(s, times=STATUS_TIMES))
        return 0
    rows: list[tuple[str, object]] = [
        ("trust domain", s.trust_domain), ("serving", s.problem or "yes"),
        ("started", fmt_time(s.started_at)),
        ("entries", f"{s.active_entries} active / {s.entries}"),
        ("roles", s.roles), ("grants", s.grants), ("connections", s.connections),
        ("CA valid until", fmt_time(s.ca_not_after)),
        ("next CA event", fmt_time(s.ca_next_event)),
        ("attestors", ", ".join(s.attestors)), ("audit records", s.audit_sequence),
        ("log level", s.log_level),
    ]
    if s.notice:
        rows.insert(2, ("degraded", s.notice))
    rows += [(f"fleet {k}", v) for k, v in sorted(s.fleet.items())]
    rows += [(f"attestor {k}", v) for k, v in sorted(s.attestor_state.items())]
    rows += [(f"federation {k}", v) for k, v in sorted(s.federation.items())]
    print_fields(rows)
    return 0


async def log_level(args: argparse.Namespace) -> int:
    r = await admin_call(args, lambda stub: stub.SetLogLevel(pb.LogLevel(level=args.level),
                                                             timeout=TIMEOUT))
    print_json({"level": r.level}) if args.output == "json" else print(r.level)
    return 0
