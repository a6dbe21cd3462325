"""What a reporter sends is checked before anything is recorded: the detail fits the audit
trail's canonical JSON (no floats, no duplicates, no lone surrogates, bounded), the fields are
bounded, and any other input is a clear InvalidRequest, never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ensign.daemon.actions import MAX_DETAIL_BYTES, checked, parse_detail
from ensign.daemon.audit import canonical
from ensign.daemon.errors import InvalidRequest


def test_a_detail_is_kept_as_the_object_it_was() -> None:
    detail = {"status": 200, "who": {"agent_id": "agt_EVIL"}, "tags": ["a", None, True]}
    assert parse_detail(json.dumps(detail)) == detail
    assert parse_detail("") == {} and parse_detail("   ") == {}


@pytest.mark.parametrize(("text", "why"), [
    ('{"latency": 0.5}', "numbers must be integers"),
    ('{"n": 1e3}', "numbers must be integers"),
    ('{"n": NaN}', "NaN is not JSON"),
    ('{"n": -Infinity}', "-Infinity is not JSON"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"s": "\\ud800"}', "lone surrogate"),
    ('{"\\udfff": 1}', "lone surrogate"),
    ('{"n": 9007199254740992}', "outside ±2**53"),
    ('[{"a": 1}]', "must be a JSON object"),
    ('"text"', "must be a JSON object"),
    ("{'a': 1}", "detail is not JSON"),
    ('{"a":' + "[" * 9 + "]" * 9 + "}", "nested deeper than 8 levels"),
    ("[" * 5000, "detail longer than 4096 bytes"),
    ("[" * 4000, "detail is not JSON"),  # too deep for the parser: refused, not a crash
    (json.dumps({"x": "é" * 2100}), "detail longer than 4096 bytes"),  # bytes, not characters
])
def test_what_the_trail_cannot_hold_exactly_is_refused_with_the_reason(text: str,
                                                                        why: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse_detail(text)
    assert why in str(e.value)


def test_the_bound_is_4_kib_of_utf8() -> None:
    fits = json.dumps({"x": "y" * (MAX_DETAIL_BYTES - 9)})
    assert len(fits.encode()) == MAX_DETAIL_BYTES
    assert parse_detail(fits)["x"] == "y" * (MAX_DETAIL_BYTES - 9)
    with pytest.raises(InvalidRequest):
        parse_detail(json.dumps({"x": "y" * (MAX_DETAIL_BYTES - 8)}))


@pytest.mark.parametrize(("fields", "why"), [
    ({"outcome": "maybe"}, "outcome must be one of success, failure, denied"),
    ({"outcome": ""}, "outcome must be one of"),
    ({"action": " "}, "action must be given"),
    ({"resource": ""}, "resource must be given"),
    ({"action": "a" * 257}, "action longer than 256 bytes"),
    ({"resource": "é" * 1025}, "resource longer than 2048 bytes"),
    ({"token": "t" * (16 * 1024 + 1)}, "token longer than 16384 bytes"),
])
def test_fields_are_bounded_and_required(fields: dict[str, str], why: str) -> None:
    args = {"token": "t", "action": "read", "resource": "doc", "outcome": "success",
            "detail": "", **fields}
    with pytest.raises(InvalidRequest) as e:
        checked(**args)
    assert why in str(e.value)


def test_a_good_record_passes_with_the_token_trimmed() -> None:
    r = checked(" tok\n", "read", "doc:1", "denied", '{"status": 403}')
    assert (r.token, r.action, r.resource, r.outcome, r.detail) == (
        "tok", "read", "doc:1", "denied", {"status": 403})


@given(st.text(max_size=300))
def test_any_text_is_a_detail_or_a_clear_refusal(text: str) -> None:
    try:
        value = parse_detail(text)
    except InvalidRequest:
        return
    assert isinstance(value, dict)
    canonical(value)  # what the log writes: never fails for an accepted detail


_JSON: Any = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=6))
def test_every_object_the_trail_can_hold_round_trips(value: dict[str, Any]) -> None:
    text = json.dumps(value)
    if len(text.encode()) > MAX_DETAIL_BYTES or text.count("[") + text.count("{") > 6:
        return  # depth and size have their own tests
    try:
        text.encode()
        canonical(value)
    except UnicodeEncodeError:  # hypothesis text may hold lone surrogates: refused above
        return
    assert parse_detail(text) == value
