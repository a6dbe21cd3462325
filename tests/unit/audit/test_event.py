"""Sealing a record: the fast path (Sealer) writes exactly the canonical sealed record."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ensign.daemon.audit.event import (
    Sealer,
    canonical,
    record_hash,
    record_time,
    seal,
    seal_line,
)

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(body=st.dictionaries(_TEXT, _VALUE, max_size=8),
       prev=st.sampled_from(["ab" * 32, "0" * 64, 'x"\\y\n']))
def test_seal_line_is_the_canonical_sealed_record(body: dict[str, Any], prev: str) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    line, digest = seal_line(body, seq=7, prev=prev, chain="cd" * 16, at=at)
    record = seal(body, seq=7, prev=prev, chain="cd" * 16, at=at)
    assert line == canonical(record) + b"\n"
    assert digest == record["hash"] == record_hash(json.loads(line))
    sealer = Sealer(body, "cd" * 16)
    assert sealer.seal(seq=7, prev=prev, at=at) == (line, digest)
    assert sealer.seal(seq=8, prev=digest, at=at, stamp=record_time(at)) == seal_line(
        body, seq=8, prev=digest, chain="cd" * 16, at=at)
    assert canonical(body) == json.dumps(body, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=False).encode()


def test_a_body_holding_the_sealer_hole_is_still_sealed_canonically() -> None:
    from ensign.daemon.audit.event import _HOLE

    body = {"reason": f"{_HOLE}s", "type": "anomaly"}
    at = datetime(2026, 1, 2, tzinfo=UTC)
    assert Sealer(body, "c").seal(seq=1, prev="0" * 64, at=at) == seal_line(
        body, seq=1, prev="0" * 64, chain="c", at=at)
