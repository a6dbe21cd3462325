"""Fuzz the transport: raw HTTP/2 garbage on both sockets. The daemon answers or closes every
connection (never hangs), keeps serving, and releases every descriptor it took."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from tests.support import h2raw
from tests.support.daemon import Daemon
from tests.support.fuzz import SLOW, serving
from tests.support.hardening import fd_count, healthy, settle_fds, soak

_FRAMES = st.lists(
    st.builds(h2raw.frame, st.integers(0, 12), st.integers(0, 255), st.integers(0, 9),
              st.binary(max_size=64)),
    max_size=8,
).map(b"".join)


@SLOW
@given(prefix=st.sampled_from([b"", h2raw.PREFACE,
                               h2raw.PREFACE + h2raw.frame(h2raw.SETTINGS, 0, 0, b"")]),
       body=st.one_of(st.binary(max_size=2048), _FRAMES),
       admin=st.booleans())
def test_raw_http2_garbage(fuzzed: Daemon, prefix: bytes, body: bytes, admin: bool) -> None:
    h2raw.blast(fuzzed.admin_socket if admin else fuzzed.socket, prefix + body)
    serving(fuzzed)


def test_garbage_connections_leave_no_fds_behind(fuzzed: Daemon) -> None:
    assert fuzzed.proc is not None
    pid = fuzzed.proc.pid
    assert healthy(fuzzed)
    baseline = fd_count(pid)
    for i in range(soak(50, 500)):
        h2raw.blast(fuzzed.socket, h2raw.PREFACE + os.urandom(i * 7 % 300))
        h2raw.blast(fuzzed.socket, os.urandom(100))
    assert settle_fds(pid, baseline) <= baseline
    serving(fuzzed)
