"""Fuzz the RPCs: hypothesis-generated requests for every method on both sockets, garbage bytes
as messages, signed tokens with random claims, random and oversized metadata and messages.

The daemon never crashes or hangs, answers with a status that names a client problem (never
UNKNOWN or INTERNAL) and keeps serving. Short form: modest example counts; `make soak`
multiplies them.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import jwt as pyjwt
import pytest
from envoy.service.secret.v3 import sds_pb2
from google.protobuf import descriptor as d_
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from ensign.proto import admin_pb2, attestation_pb2, delegation_pb2, workload_pb2
from tests.support.clients import HEADER, Metadata, call
from tests.support.daemon import Daemon
from tests.support.fuzz import FUZZ, SENSIBLE, check_status, messages, methods, serving
from tests.support.idp import CAL, IDP, Idp

WORKLOAD = methods(workload_pb2, delegation_pb2, attestation_pb2, sds_pb2)  # + Envoy's SDS
ADMIN = methods(admin_pb2)


def _invoke(sock: Any, path: str, m: d_.MethodDescriptor, raw: bytes,
            metadata: Metadata = HEADER) -> tuple[grpc.StatusCode, str]:
    code, details, _ = call(sock, path, raw, metadata=metadata, stream=m.server_streaming,
                            timeout=15)
    return code, details


@pytest.mark.parametrize(("path", "method"), WORKLOAD, ids=[p for p, _ in WORKLOAD])
def test_workload_socket_rpcs_survive_generated_requests(
    fuzzed: Daemon, path: str, method: d_.MethodDescriptor
) -> None:
    @FUZZ
    @given(msg=messages(method.input_type))
    def run(msg: Message) -> None:
        code, details = _invoke(fuzzed.socket, path, method, msg.SerializeToString())
        check_status(code, details, f"{path} {msg}")

    run()
    serving(fuzzed)


@pytest.mark.parametrize(("path", "method"), ADMIN, ids=[p for p, _ in ADMIN])
def test_admin_rpcs_survive_generated_requests(
    admin_target: Daemon, path: str, method: d_.MethodDescriptor
) -> None:
    @FUZZ
    @given(msg=messages(method.input_type))
    def run(msg: Message) -> None:
        code, details = _invoke(admin_target.admin_socket, path, method,
                                msg.SerializeToString(), metadata=())
        check_status(code, details, f"{path} {msg}")

    run()
    serving(admin_target)


@FUZZ
@given(target=st.sampled_from(WORKLOAD + ADMIN), raw=st.binary(max_size=512))
def test_garbage_bytes_as_messages(
    fuzzed: Daemon, admin_target: Daemon, target: tuple[str, d_.MethodDescriptor], raw: bytes
) -> None:
    path, method = target
    # Admin garbage goes to the admin fuzzing daemon: bytes that decode as a valid
    # `ApplyAgents {prune: true}` are an admin's order to decommission every agent, which the
    # daemon rightly carries out, and the later tests here need `fuzzed`'s agent alive.
    d = admin_target if path.startswith("/ensign.admin") else fuzzed
    sock = d.admin_socket if d is admin_target else d.socket
    code, details = _invoke(sock, path, method, raw)
    check_status(code, details, f"{path} {raw!r}")
    assert d.alive()


_CLAIM = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=20),
                   st.lists(st.text(max_size=10), max_size=3),
                   st.dictionaries(st.sampled_from(["sub", "act", "iss"]),
                                   st.text(max_size=30), max_size=3))


@FUZZ
@given(
    claims=st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "scope", "scp", "may_act",
                         "act", "client_id", "jti"]), _CLAIM, max_size=10),
    valid_core=st.booleans(),
    kid=st.sampled_from(["idp-1", "k2", ""]),
    audience=st.sampled_from([f"{CAL}/x", "", "x" * 300]),
    scopes=st.lists(st.sampled_from(["calendar.read", "calendar.write", "", "a b"]), max_size=3),
    ttl=st.integers(-5, 10**12),
)
def test_exchange_token_with_signed_random_claims(
    fuzzed: Daemon, idp: Idp, claims: dict[str, Any],
    valid_core: bool, kid: str, audience: str, scopes: list[str], ttl: int,
) -> None:
    # Tokens really signed by the trusted IdP, so the claim checks behind the signature run.
    claims = {k: v for k, v in claims.items() if k != "iss" or isinstance(v, str)}
    if valid_core:
        now = int(time.time())
        claims = {**claims, "iss": IDP, "aud": "ensign", "exp": now + 300, "iat": now,
                  "sub": str(claims.get("sub", "alice"))}
    token = pyjwt.encode(claims, idp.key, algorithm="ES256", headers={"kid": kid})
    req = delegation_pb2.ExchangeTokenRequest(subject_token=token, audience=audience,
                                              scopes=scopes, requested_ttl_seconds=ttl)
    code, details, raw = call(fuzzed.socket, "/ensign.delegation.v1.Delegation/ExchangeToken",
                              req.SerializeToString(), timeout=15)
    check_status(code, details, f"claims {claims}")
    if code == grpc.StatusCode.OK:
        out = delegation_pb2.ExchangeTokenResponse.FromString(raw)
        granted = pyjwt.decode(out.access_token, options={"verify_signature": False})
        # Whatever the claims said, nothing beyond the role's scope is ever granted.
        assert set(granted["scope"].split()) <= {"calendar.read"}
        assert granted["act"]["sub"].startswith("spiffe://example.org/")
    assert fuzzed.alive()


# -- metadata and size ------------------------------------------------------------------------

_HKEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=20)
_HVAL = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=100)


@FUZZ
@given(extra=st.lists(st.tuples(_HKEY, _HVAL), max_size=6), with_header=st.booleans())
def test_random_metadata(fuzzed: Daemon, extra: list[tuple[str, str]], with_header: bool) -> None:
    md = tuple((k, v) for k, v in extra if not k.startswith("grpc-"))
    if with_header:
        md = (*md, *HEADER)
    code, details, _ = call(fuzzed.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
                            workload_pb2.JWTSVIDRequest(audience=[f"{CAL}/x"])
                            .SerializeToString(), metadata=md)
    check_status(code, details, f"metadata {md}")
    workload_ok = [v for k, v in md if k == "workload.spiffe.io"] == ["true"]
    assert (code == grpc.StatusCode.OK) == workload_ok, (md, code, details)


@pytest.mark.parametrize("size", [64 * 1024, 4 * 1024 * 1024 + 1, 16 * 1024 * 1024])
def test_oversized_messages_are_refused_and_daemon_serves(fuzzed: Daemon, size: int) -> None:
    assert fuzzed.proc is not None
    for path, raw in [
        ("/SpiffeWorkloadAPI/FetchJWTSVID",
         workload_pb2.JWTSVIDRequest(audience=["x" * size]).SerializeToString()),
        ("/SpiffeWorkloadAPI/ValidateJWTSVID",
         workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="e" * size).SerializeToString()),
        ("/ensign.delegation.v1.Delegation/ExchangeToken",
         delegation_pb2.ExchangeTokenRequest(subject_token="t" * size, audience="a")
         .SerializeToString()),
    ]:
        code, details, _ = call(fuzzed.socket, path, raw, timeout=30)
        assert code in SENSIBLE - {grpc.StatusCode.OK}, (path, size, code, details)
        if len(raw) > 1024 * 1024:  # `[limits] max_request_bytes`, refused on the length prefix
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (path, size, code, details)
    serving(fuzzed)


@pytest.mark.parametrize(("count", "size"), [(1, 16 * 1024), (1, 1024 * 1024), (2000, 20)])
def test_oversized_metadata_is_refused_and_daemon_serves(
    fuzzed: Daemon, count: int, size: int
) -> None:
    md = (*HEADER, *((f"x-pad-{i}", "v" * size) for i in range(count)))
    code, details, _ = call(fuzzed.socket, "/SpiffeWorkloadAPI/FetchJWTSVID",
                            workload_pb2.JWTSVIDRequest(audience=["a"]).SerializeToString(),
                            metadata=md, timeout=30)
    # Either refused, or (if within limits) served; never a crash or a hang.
    assert code in SENSIBLE | {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, (
        code, details)
    serving(fuzzed)
