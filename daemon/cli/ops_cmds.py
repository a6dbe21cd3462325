"""`ensign status` and `ensign log-level`: operator views over the admin socket."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict

from ensign.proto import admin_pb2 as pb
from ensign.proto.admin_grpc import AdminStub

from .common import TIMEOUT, admin_socket, channel, iso, print_json

Common = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(sub: Any, common: Common) -> None:
    st = common(sub.add_parser("status", help="the daemon's state (admin socket)"))
    st.set_defaults(func=status)
    ll = common(sub.add_parser("log-level", help="read or set the log level at runtime"))
    ll.add_argument("level", nargs="?", default="",
                    choices=["", "debug", "info", "warning", "error"])
    ll.set_defaults(func=log_level)


async def status(args: argparse.Namespace) -> int:
    async with channel(admin_socket(args)) as ch:
        s = await AdminStub(ch).GetStatus(pb.StatusRequest(), timeout=TIMEOUT)
    if args.output == "json":
        print_json(MessageToDict(s, preserving_proto_field_name=True,
                                 always_print_fields_with_no_presence=True))
        return 0
    rows = [
        ("trust domain", s.trust_domain), ("serving", s.problem or "yes"),
        ("started", iso(s.started_at)), ("entries", f"{s.active_entries} active / {s.entries}"),
        ("roles", str(s.roles)), ("grants", str(s.grants)), ("connections", str(s.connections)),
        ("CA valid until", iso(s.ca_not_after)), ("next CA event", iso(s.ca_next_event)),
        ("attestors", ", ".join(s.attestors)), ("audit records", str(s.audit_sequence)),
        ("log level", s.log_level),
    ]
    if s.notice:
        rows.insert(2, ("degraded", s.notice))
    rows += [(f"fleet {k}", v) for k, v in sorted(s.fleet.items())]
    rows += [(f"attestor {k}", v) for k, v in sorted(s.attestor_state.items())]
    rows += [(f"federation {k}", v) for k, v in sorted(s.federation.items())]
    width = max(16, *(len(k) for k, _ in rows))
    for k, v in rows:
        print(f"{k:{width}} {v}")
    return 0


async def log_level(args: argparse.Namespace) -> int:
    async with channel(admin_socket(args)) as ch:
        r = await AdminStub(ch).SetLogLevel(pb.LogLevel(level=args.level), timeout=TIMEOUT)
    print(r.level)
    return 0
