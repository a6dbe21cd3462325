"""SDS v3 on the Workload API socket, driven by a raw client: resources, the xDS conversation
(versions, nonces, ACKs, NACKs), pushes, what other callers get, and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spv
from envoy.service.discovery.v3 import discovery_pb2

from ensign.proto import workload_pb2 as pb
from tests.support.clients import stream
from tests.support.daemon import NOBODY, Daemon, run_as
from tests.support.sds import SdsStream, discovery_request, fetch, secrets

ONE = "spiffe://example.org/sds/one"
TWO = "spiffe://example.org/sds/two"
THEIRS = "spiffe://example.org/sds/nobody"


@pytest.fixture(scope="module")
def d(shared_daemon: Daemon) -> Iterator[Daemon]:
    d = shared_daemon
    for name, sid in (("sds-one", ONE), ("sds-two", TWO)):
        d.register(name, "unix:uid:0", extra=("--kind", "service", "--spiffe-id", sid))
    d.register("sds-nobody", f"unix:uid:{NOBODY}",
               extra=("--kind", "service", "--spiffe-id", THEIRS))
    yield d


def leaf(secret: object) -> x509.Certificate:
    chain = secret.tls_certificate.certificate_chain.inline_bytes  # type: ignore[attr-defined]
    return x509.load_pem_x509_certificates(chain)[0]


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def bundle(d: Daemon) -> list[x509.Certificate]:
    s = secrets(fetch(str(d.socket), "ROOTCA"))["ROOTCA"]
    return x509.load_pem_x509_certificates(s.validation_context.trusted_ca.inline_bytes)


def test_fetch_serves_own_certificates_bundles_and_the_spiffe_validator(d: Daemon) -> None:
    names = (ONE, TWO, "default", "ROOTCA", "example.org", "spiffe://example.org", "ALL")
    got = secrets(fetch(str(d.socket), *names))
    assert sorted(got) == sorted(names)
    roots = bundle(d)
    for name in (ONE, TWO):
        cert = leaf(got[name])
        assert uri_sans(cert) == [name]
        key = load_pem_private_key(got[name].tls_certificate.private_key.inline_bytes, None)
        assert key.public_key() == cert.public_key()
        cert.verify_directly_issued_by(roots[0])
    assert uri_sans(leaf(got["default"]))[0] in (ONE, TWO)
    for name in ("ROOTCA", "example.org", "spiffe://example.org"):
        pems = got[name].validation_context.trusted_ca.inline_bytes
        assert x509.load_pem_x509_certificates(pems) == roots
    validator = got["ALL"].validation_context.custom_validator_config
    assert validator.name == "envoy.tls.cert_validator.spiffe"
    config = spv.SPIFFECertValidatorConfig()
    assert validator.typed_config.Unpack(config)
    assert [td.name for td in config.trust_domains] == ["example.org"]
    assert x509.load_pem_x509_certificates(
        config.trust_domains[0].trust_bundle.inline_bytes) == roots


def test_every_certificate_sent_is_audited_with_its_serial(d: Daemon) -> None:
    cert = leaf(secrets(fetch(str(d.socket), ONE))[ONE])
    records = json.loads(d.cli("audit", "list", "--type", "svid.issued", "-o", "json").stdout)
    assert any(r["spiffe_id"] == ONE and r["details"].get("via") == "sds"
               and int(r["details"]["serial"], 16) == cert.serial_number for r in records)


def test_unknown_names_get_nothing_and_others_identities_a_withdrawn_placeholder(
        d: Daemon) -> None:
    got = secrets(fetch(str(d.socket), "no-such-thing", "spiffe://other.org", THEIRS, ONE))
    assert sorted(got) == sorted([THEIRS, ONE])
    placeholder = leaf(got[THEIRS])
    assert uri_sans(placeholder) == []  # not their certificate, and no identity at all
    with pytest.raises(Exception):
        placeholder.verify_directly_issued_by(bundle(d)[0])


def test_another_uid_gets_only_its_own_identity(d: Daemon) -> None:
    code = (
        "import sys, grpc\n"
        "ch = grpc.insecure_channel('unix:' + sys.argv[1])\n"
        "f = ch.unary_unary('/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets')\n"
        "sys.stdout.write(f(bytes.fromhex(sys.argv[2]), timeout=10).hex())\n"
    )
    out = run_as(NOBODY, code, str(d.socket), discovery_request("default", ONE, TWO).hex())
    assert out.returncode == 0, out.stderr
    got = secrets(discovery_pb2.DiscoveryResponse.FromString(bytes.fromhex(out.stdout)))
    assert uri_sans(leaf(got["default"])) == [THEIRS]
    assert uri_sans(leaf(got[ONE])) == [] and uri_sans(leaf(got[TWO])) == []


def test_a_caller_without_identity_is_denied(d: Daemon) -> None:
    code = (
        "import sys, grpc\n"
        "ch = grpc.insecure_channel('unix:' + sys.argv[1])\n"
        "f = ch.unary_unary('/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets')\n"
        "try:\n    f(bytes.fromhex(sys.argv[2]), timeout=10)\n"
        "except grpc.RpcError as e:\n    print(e.code().name, e.details())\n"
    )
    out = run_as(NOBODY + 1, code, str(d.socket), discovery_request("default").hex())
    assert out.stdout.strip() == "PERMISSION_DENIED no identity issued", out.stderr


def test_acks_and_nacks_are_not_answered_and_a_nacked_version_is_not_resent(d: Daemon) -> None:
    with SdsStream(str(d.socket)) as s:
        s.send(discovery_request(ONE))
        first = s.recv()
        assert first.version_info == "1" and first.nonce
        assert list(secrets(first)) == [ONE]
        s.ack(first, ONE)  # ACK
        for i in range(300):  # a NACK storm, valid and stale nonces alike
            s.send(discovery_request(ONE, version="", nonce=first.nonce if i % 2 else "stale",
                                     nack=f"rejected {i}"))
        # a stale request changing the names is ignored too
        s.send(discovery_request(ONE, TWO, version="1", nonce="not-the-last-nonce"))
        s.send(discovery_request(ONE, "ROOTCA", version="1", nonce=first.nonce))
        nxt = s.recv()  # had anything been re-sent, it would come first
        assert nxt.version_info == "2"
        assert sorted(secrets(nxt)) == sorted([ONE, "ROOTCA"])
        assert nxt.nonce != first.nonce


def test_only_unknown_names_get_no_response_until_a_known_one_is_asked(d: Daemon) -> None:
    with SdsStream(str(d.socket)) as s:
        s.send(discovery_request("who-knows"))
        s.send(discovery_request("who-knows", "ROOTCA"))  # no nonce yet: nothing was sent
        first = s.recv()
        assert first.version_info == "1"
        assert list(secrets(first)) == ["ROOTCA"]


def test_registry_change_pushes_a_new_certificate(d: Daemon) -> None:
    entries = json.loads(d.cli("agent", "list", "-o", "json").stdout)
    two = next(e for e in entries if e["spiffe_id"] == TWO)
    with SdsStream(str(d.socket)) as s:
        s.send(discovery_request(TWO))
        first = s.recv()
        s.ack(first, TWO)
        d.cli("agent", "update", two["id"], "--dns-name", "two.example.org")
        pushed = s.recv()
        assert pushed.version_info == "2"
        cert = leaf(secrets(pushed)[TWO])
        assert cert.serial_number != leaf(secrets(first)[TWO]).serial_number
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert dns.value.get_values_for_type(x509.DNSName) == ["two.example.org"]


def test_unknown_type_url_ends_the_stream_with_invalid_argument(d: Daemon) -> None:
    with SdsStream(str(d.socket)) as s:
        s.send(discovery_request(
            "x", type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"))
        code, message = s.error()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsupported type_url" in message
    with pytest.raises(grpc.RpcError) as e:
        fetch(str(d.socket), "default", type_url="type.googleapis.com/bogus")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("raw", [b"\xff\xff\xff\xff", b"\x0a\xff\x01", b"\x12" + b"\x80" * 12])
def test_garbage_requests_end_with_invalid_argument(d: Daemon, raw: bytes) -> None:
    with SdsStream(str(d.socket)) as s:
        s.send(raw)
        code, message = s.error()
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "malformed request message")


def test_too_many_names_and_delta_are_refused(d: Daemon) -> None:
    with SdsStream(str(d.socket)) as s:
        s.send(discovery_request(*[f"n{i}" for i in range(65)]))
        code, message = s.error()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 64" in message
    with SdsStream(str(d.socket), "DeltaSecrets") as s:
        s.send(b"")
        code, _ = s.error()
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_daemon_keeps_serving_after_bad_sds_input(d: Daemon) -> None:
    assert d.alive()
    assert "healthy" in d.cli("healthcheck").stdout
    with grpc.insecure_channel(f"unix:{d.socket}") as ch:
        first = next(stream(ch, "FetchX509SVID", timeout=10))
    assert pb.X509SVIDResponse.FromString(first).svids[0].spiffe_id in (ONE, TWO)
