"""The Workload API end to end: a real daemon, py-spiffe, openssl and raw grpcio clients."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe import JwtSvid, WorkloadApiClient
from spiffe.errors import PySpiffeError

from ensign.proto import workload_pb2 as pb
from tests.support.clients import channel, fetch_jwt, status_of, stream, unary
from tests.support.daemon import NOBODY, Daemon, run_as
from tests.support.exe import sha256_of, this_exe
from tests.support.scripts import fetch_jwt_as


@pytest.fixture(scope="module")
def entry(shared_daemon: Daemon) -> dict[str, object]:
    """This test process's identity: root running this Python binary."""
    return shared_daemon.register(
        "pytest", "unix:uid:0", f"unix:path:{this_exe()}",
        f"unix:sha256:{sha256_of(this_exe())}",
        extra=("--dns-name", "pytest.local", "--hint", "internal"),
    )


def test_py_spiffe_fetches_x509_context(shared_daemon: Daemon, entry: dict[str, object]) -> None:
    with WorkloadApiClient(socket_path=shared_daemon.endpoint) as client:
        ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    assert str(svid.spiffe_id) == entry["spiffe_id"]
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    assert bundle is not None and len(bundle.x509_authorities) >= 1
    leaf = svid.leaf
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [entry["spiffe_id"]]
    assert sans.get_values_for_type(x509.DNSName) == ["pytest.local"]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 3500 <= lifetime.total_seconds() <= 3700  # default 1h (+10s backdating)


def test_py_spiffe_jwt_round_trip(shared_daemon: Daemon, entry: dict[str, object]) -> None:
    with WorkloadApiClient(socket_path=shared_daemon.endpoint) as client:
        jwt_svid = client.fetch_jwt_svid(audience={"billing"})
        bundles = client.fetch_jwt_bundles()
        assert str(jwt_svid.spiffe_id) == entry["spiffe_id"]
        bundle = bundles.get_bundle_for_trust_domain(jwt_svid.spiffe_id.trust_domain)
        assert bundle is not None
        parsed = JwtSvid.parse_and_validate(jwt_svid.token, bundle, {"billing"})
        assert parsed.spiffe_id == jwt_svid.spiffe_id
        validated = client.validate_jwt_svid(jwt_svid.token, "billing")
        assert str(validated.spiffe_id) == entry["spiffe_id"]
        with pytest.raises(PySpiffeError):
            client.validate_jwt_svid(jwt_svid.token, "someone-else")
    # The cached token is reused until half life: a second fetch gets the same one.
    again = fetch_jwt(str(shared_daemon.socket), "billing")
    assert again.svids[0].svid == jwt_svid.token


def test_validate_returns_claims(shared_daemon: Daemon, entry: dict[str, object]) -> None:
    token = fetch_jwt(str(shared_daemon.socket), "ledger").svids[0].svid
    raw = unary(str(shared_daemon.socket), "ValidateJWTSVID",
                pb.ValidateJWTSVIDRequest(audience="ledger", svid=token).SerializeToString())
    resp = pb.ValidateJWTSVIDResponse.FromString(raw)
    assert resp.spiffe_id == entry["spiffe_id"]
    claims = dict(resp.claims.items())
    assert claims["sub"] == entry["spiffe_id"]
    assert list(claims["aud"]) == ["ledger"]
    assert "jti" in claims and "exp" in claims and "iat" in claims


def test_cli_writes_files_openssl_verifies(
    shared_daemon: Daemon, entry: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "svid"
    shared_daemon.cli("fetch", "x509", "--write", str(out))
    key_mode = stat.S_IMODE((out / "svid.0.key").stat().st_mode)
    assert key_mode == 0o600
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "bundle.0.pem"), str(out / "svid.0.pem")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_missing_security_header_is_invalid_argument(shared_daemon: Daemon) -> None:
    code, details = status_of(
        unary, str(shared_daemon.socket), "FetchJWTSVID",
        pb.JWTSVIDRequest(audience=["a"]).SerializeToString(), header=False,
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "security header" in details
    with channel(str(shared_daemon.socket)) as ch:
        code, _ = status_of(lambda: next(stream(ch, "FetchX509SVID", header=False)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("request_bytes", "expect"),
    [
        (b"\xff\xff\xff\xff", "malformed"),
        (pb.JWTSVIDRequest().SerializeToString(), "audience must be specified"),
        (pb.JWTSVIDRequest(audience=[""]).SerializeToString(), "must not be empty"),
        (pb.JWTSVIDRequest(audience=[f"a{i}" for i in range(10_000)]).SerializeToString(),
         "at most"),
        (pb.JWTSVIDRequest(audience=["a"], spiffe_id="not a spiffe id").SerializeToString(),
         "invalid SPIFFE ID"),
        (pb.JWTSVIDRequest(audience=["a"], spiffe_id="spiffe://example.org/a/../b")
         .SerializeToString(), "invalid SPIFFE ID"),
    ],
    ids=["garbage", "no-audience", "empty-audience", "10k-audiences", "bad-id", "dot-segment"],
)
def test_bad_jwt_requests_get_invalid_argument_and_daemon_keeps_serving(
    shared_daemon: Daemon, entry: dict[str, object], request_bytes: bytes, expect: str
) -> None:
    code, details = status_of(unary, str(shared_daemon.socket), "FetchJWTSVID", request_bytes)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expect in details
    assert len(fetch_jwt(str(shared_daemon.socket), "still-works").svids) == 1
    assert shared_daemon.alive()


def test_validate_rejects_bad_tokens(shared_daemon: Daemon, entry: dict[str, object]) -> None:
    sock = str(shared_daemon.socket)
    for token, expect in [
        ("", "svid must be specified"),
        ("not.a.jwt", "malformed"),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "algorithm"),
    ]:
        req = pb.ValidateJWTSVIDRequest(audience="a", svid=token).SerializeToString()
        code, details = status_of(unary, sock, "ValidateJWTSVID", req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, token
        assert expect in details


def test_wit_rpcs_are_unimplemented(shared_daemon: Daemon) -> None:
    with channel(str(shared_daemon.socket)) as ch:
        code, _ = status_of(lambda: next(stream(ch, "FetchWITSVID")))
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_spiffe_id_filter(shared_daemon: Daemon, entry: dict[str, object]) -> None:
    resp = fetch_jwt(str(shared_daemon.socket), "x", spiffe_id=str(entry["spiffe_id"]))
    assert [s.spiffe_id for s in resp.svids] == [entry["spiffe_id"]]
    code, _ = status_of(fetch_jwt, str(shared_daemon.socket), "x",
                        spiffe_id="spiffe://example.org/someone/else")
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_healthcheck(shared_daemon: Daemon) -> None:
    result = shared_daemon.cli("healthcheck")
    assert result.stdout.strip() == "healthy"


def test_other_uid_without_entry_is_denied(shared_daemon: Daemon, entry: dict[str, object]) -> None:
    result = fetch_jwt_as(NOBODY, shared_daemon.socket, "aud")
    assert result == "STATUS PERMISSION_DENIED no identity issued", result


def test_other_uid_gets_only_its_own_identity(shared_daemon: Daemon) -> None:
    other = shared_daemon.register("nobody-agent", f"unix:uid:{NOBODY}")
    result = fetch_jwt_as(NOBODY, shared_daemon.socket, "aud")
    assert result.startswith("OK "), result
    resp = pb.JWTSVIDResponse.FromString(bytes.fromhex(result.split()[1]))
    assert [s.spiffe_id for s in resp.svids] == [other["spiffe_id"]]
    shared_daemon.cli("agent", "delete", str(other["id"]))


def test_deleting_entry_ends_open_stream_with_permission_denied(daemon: Daemon) -> None:
    record = daemon.register("short-lived", "unix:uid:0")
    with channel(str(daemon.socket)) as ch:
        # A stream the deletion does not end runs into its deadline instead (DEADLINE_EXCEEDED).
        # No timed assertion: speed is bench's.
        it = stream(ch, "FetchX509SVID", timeout=20)
        first = pb.X509SVIDResponse.FromString(next(it))
        assert first.svids[0].spiffe_id == record["spiffe_id"]
        daemon.cli("agent", "delete", str(record["id"]))
        code, details = status_of(lambda: next(it))
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
    assert daemon.alive()


def test_entry_update_reaches_open_stream(daemon: Daemon) -> None:
    record = daemon.register("updated", "unix:uid:0")
    with channel(str(daemon.socket)) as ch:
        it = stream(ch, "FetchX509SVID", timeout=30)
        first = pb.X509SVIDResponse.FromString(next(it))
        daemon.cli("agent", "update", str(record["id"]), "--dns-name", "new.example")
        second = pb.X509SVIDResponse.FromString(next(it))
    assert first.svids[0].x509_svid != second.svids[0].x509_svid
    leaf = x509.load_der_x509_certificate(second.svids[0].x509_svid[: _der_len(second)])
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["new.example"]


def _der_len(resp: pb.X509SVIDResponse) -> int:
    from ensign.daemon.issuing import split_der

    return len(split_der(resp.svids[0].x509_svid)[0])


def test_py_spiffe_importable_beside_daemon_protos() -> None:
    # Both define the package-less Workload API; ours lives in a private descriptor pool.
    code = ("import spiffe._proto.workload_pb2, ensign.proto.workload_pb2; "
            "import ensign.daemon.api.workload; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_duplicate_hints_keep_the_first_holder_on_every_answer(daemon: Daemon) -> None:
    # Hints are unique within a response (Workload API 5.2.1). The second answer is built from
    # the per-SVID messages the daemon keeps: clearing a duplicate must not edit those.
    daemon.register("first", "unix:uid:0", extra=("--hint", "same"))
    daemon.register("second", "unix:uid:0", extra=("--hint", "same"))
    answers = []
    for _ in range(2):
        with channel(str(daemon.socket)) as ch:
            raw = next(stream(ch, "FetchX509SVID", timeout=10))
        answers.append(pb.X509SVIDResponse.FromString(raw))
    for answer in answers:
        assert sorted(s.hint for s in answer.svids) == ["", "same"]
    assert answers[0].svids[0].x509_svid == answers[1].svids[0].x509_svid  # the cached SVID


def test_duplicate_hints_in_a_jwt_answer_keep_the_first_holder(daemon: Daemon) -> None:
    # Workload API 6.2.1: hints MUST be unique within a FetchJWTSVID response too.
    first = daemon.register("first", "unix:uid:0", extra=("--hint", "same"))
    second = daemon.register("second", "unix:uid:0", extra=("--hint", "same"))
    third = daemon.register("third", "unix:uid:0", extra=("--hint", "other"))
    for _ in range(2):  # the second answer comes from the token cache
        answer = fetch_jwt(str(daemon.socket), "api")
        hints = {s.spiffe_id: s.hint for s in answer.svids}
        assert hints == {first["spiffe_id"]: "same", second["spiffe_id"]: "",
                         third["spiffe_id"]: "other"}


_NOBODY_VALIDATOR = """
import sys, grpc
path, aud, token = sys.argv[1], sys.argv[2], sys.argv[3]
ch = grpc.insecure_channel("unix:" + path)
call = ch.unary_unary("/SpiffeWorkloadAPI/ValidateJWTSVID")
# ValidateJWTSVIDRequest: 1 audience, 2 svid (both strings)
def field(n, s):
    b = s.encode()
    out, length = bytes([n << 3 | 2]), len(b)
    while length >= 0x80:
        out += bytes([length & 0x7F | 0x80]); length >>= 7
    return out + bytes([length]) + b
try:
    resp = call(field(1, aud) + field(2, token), metadata=[("workload.spiffe.io", "true")],
                timeout=10)
except grpc.RpcError as e:
    print("STATUS", e.code().name, e.details())
else:
    print("OK", resp.hex())
"""


def test_a_validator_without_an_identity_validates_and_is_audited(daemon: Daemon) -> None:
    # As with SPIRE, a service that only validates tokens needs no registry entry of its own.
    holder = daemon.register("holder", "unix:uid:0")
    token = fetch_jwt(str(daemon.socket), "ledger").svids[0].svid
    out = run_as(NOBODY, _NOBODY_VALIDATOR, str(daemon.socket), "ledger", token)
    assert out.stdout.startswith("OK"), out.stdout + out.stderr
    resp = pb.ValidateJWTSVIDResponse.FromString(bytes.fromhex(out.stdout.split()[1]))
    assert resp.spiffe_id == holder["spiffe_id"]
    jti = dict(resp.claims.items())["jti"]
    # A token for another service is refused, and recorded as the holder's token misdirected.
    out = run_as(NOBODY, _NOBODY_VALIDATOR, str(daemon.socket), "payments", token)
    assert out.stdout.startswith("STATUS INVALID_ARGUMENT"), out.stdout + out.stderr
    assert "does not include 'payments'" in out.stdout
    records = json.loads(daemon.cli("audit", "list", "--type", "svid.validated",
                                    "-o", "json").stdout)
    assert [(r["result"], r["audience"], r["agent_id"], r["spiffe_id"], r["process"]["uid"],
             r["details"]["jti"], r["details"]["validator"]) for r in records] == [
        ("success", ["ledger"], holder["id"], holder["spiffe_id"], NOBODY, jti, []),
        ("denied", ["payments"], holder["id"], holder["spiffe_id"], NOBODY, jti, []),
    ]
    assert records[1]["details"]["token_audience"] == ["ledger"]
    assert "payments" in records[1]["reason"]
    # no generic refusal record besides the richer one
    denied = json.loads(daemon.cli("audit", "list", "--type", "request.denied",
                                   "-o", "json").stdout)
    assert [r for r in denied if r["details"]["method"] == "ValidateJWTSVID"] == []


_WIRED = """
import sys
from pathlib import Path
from ensign.daemon.config import load
from ensign.daemon.issuing import utcnow
from ensign.daemon.server import service_names
from ensign.daemon.wiring import build
print(*service_names(build(load(Path(sys.argv[1])), utcnow).workload_server.services))
"""


_REFLECTION_CLIENT = r"""
import json, sys
import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
sock, wired, spiffe_id = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
entry = {"spiffe_id": spiffe_id}
def channel(path):
    return grpc.insecure_channel("unix:" + path)
shared_daemon_socket = sock
with channel(shared_daemon_socket) as ch:
    db = ProtoReflectionDescriptorDatabase(ch)
    listed = sorted(db.get_services())
    assert listed == wired
    # grpcurl asks v1 first: the same list there
    from grpclib.reflection.v1 import reflection_pb2 as v1

    answer = v1.ServerReflectionResponse.FromString(next(ch.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")(
            iter([v1.ServerReflectionRequest(list_services="").SerializeToString()]),
            timeout=10)))
    assert sorted(x.name for x in answer.list_services_response.service) == wired
    assert {"SpiffeWorkloadAPI", "ensign.delegation.v1.Delegation",
            "ensign.attestation.v1.Attestation", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(listed)
    pool = DescriptorPool(db)
    for name in listed:  # every method of every listed service is routed
        for m in pool.FindServiceByName(name).methods:
            path = f"/{name}/{m.name}"
            if m.client_streaming:
                call = ch.stream_stream(path)(iter([b""]), timeout=5)
            elif m.server_streaming:
                call = ch.unary_stream(path)(b"", timeout=5)
            else:
                call = ch.unary_unary(path).future(b"", timeout=5)
            try:
                next(call) if m.server_streaming else call.result()
            except grpc.RpcError as e:
                assert e.details() != "Method not found", path
            finally:
                call.cancel()
    # a JWT-SVID fetched with message classes made from the reflected descriptors
    request = message_factory.GetMessageClass(pool.FindMessageTypeByName("JWTSVIDRequest"))
    response = message_factory.GetMessageClass(pool.FindMessageTypeByName("JWTSVIDResponse"))
    method = pool.FindServiceByName("SpiffeWorkloadAPI").FindMethodByName("FetchJWTSVID")
    assert (method.input_type.name, method.output_type.name) == ("JWTSVIDRequest",
                                                                 "JWTSVIDResponse")
    raw = ch.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")(
        request(audience=["reflected"]).SerializeToString(),
        metadata=(("workload.spiffe.io", "true"),), timeout=10)
    assert entry["spiffe_id"] in [s.spiffe_id for s in response.FromString(raw).svids]


print("OK")
"""


def test_server_reflection_lists_what_the_socket_serves(
        shared_daemon: Daemon, entry: dict[str, object]) -> None:
    # Workload API endpoint spec 7: reflection, with no security header (grpcio's reflection
    # client sends none), as grpcurl uses it: list, resolve descriptors, call through them.
    # Exactly the services the wired socket routes, whatever is added to it later. (Asked, and
    # the reflection client run, in processes of their own: grpclib's and grpcio's reflection
    # protos share names in protobuf's default pool.)
    wired = subprocess.run([sys.executable, "-c", _WIRED, str(shared_daemon.config_path)],
                           capture_output=True, text=True, check=True).stdout.split()
    out = subprocess.run([sys.executable, "-c", _REFLECTION_CLIENT, str(shared_daemon.socket),
                          json.dumps(wired), str(entry["spiffe_id"])],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["OK"], out.stdout + out.stderr


def test_a_suspended_agents_token_no_longer_validates(daemon: Daemon) -> None:
    """Suspending an agent takes effect at once for this node's ValidateJWTSVID too: a token it
    holds (still within its lifetime) is refused, and validates again after resume."""
    rec = daemon.register("holder", "unix:uid:0")
    token = fetch_jwt(str(daemon.socket), "svc").svids[0].svid
    ok = daemon.cli("validate", "jwt", "--audience", "svc", "--token", token)
    assert ok.stdout.startswith(f"valid: {rec['spiffe_id']}")
    daemon.cli("agent", "suspend", str(rec["id"]), "--reason", "investigating")
    refused = daemon.cli("validate", "jwt", "--audience", "svc", "--token", token, check=False)
    assert refused.returncode == 65, refused.stderr
    assert refused.stderr.strip() == "ensign: INVALID_ARGUMENT: the token's agent is suspended"
    daemon.cli("agent", "resume", str(rec["id"]))
    again = daemon.cli("validate", "jwt", "--audience", "svc", "--token", token)
    assert again.stdout.startswith(f"valid: {rec['spiffe_id']}")
