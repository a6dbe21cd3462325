"""The one front, end to end: every refusal on every service of the Workload API socket is one
request.denied audit record naming the method, whatever refused it (the header, the caller's
identity, the request, a missing TPM)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from ensign.daemon.audit import read_records
from ensign.proto import attestation_pb2, delegation_pb2
from ensign.proto import workload_pb2 as pb
from tests.support.clients import HEADER, Metadata, call
from tests.support.daemon import Daemon, make_daemon, tmp_root
from tests.support.idp import CAL, Idp

SVC = {"workload": "/SpiffeWorkloadAPI/", "delegation": "/ensign.delegation.v1.Delegation/",
       "attestation": "/ensign.attestation.v1.Attestation/"}
STREAMS = {"FetchX509SVID", "FetchX509Bundles", "FetchJWTBundles"}


@pytest.fixture(scope="module")
def idp() -> Idp:
    return Idp()


@pytest.fixture(scope="module")
def node(idp: Idp) -> Iterator[Daemon]:
    """Delegation on, no TPM, and no entry for this test process."""
    root = tmp_root()
    d = make_daemon(root, idp.config(root))
    yield d
    if d.alive():
        d.stop()
    shutil.rmtree(root, ignore_errors=True)


def _exchange(idp: Idp, token: str | None = None) -> bytes:
    return delegation_pb2.ExchangeTokenRequest(
        subject_token=idp.token() if token is None else token, audience=f"{CAL}/v1",
        scopes=["calendar.read"]).SerializeToString()


def _denials(d: Daemon, method: str, more_than: int = -1) -> list[dict[str, Any]]:
    """request.denied records naming `method`, read from the log's files; waits (up to 5 s)
    for more than `more_than` of them, since a refusal's record is written after the reply."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in read_records(d.data_dir / "audit")
                 if r["type"] == "request.denied" and r["details"]["method"] == method]
        if len(found) > more_than or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _cases(idp: Idp) -> list[tuple[str, str, bytes, Metadata, grpc.StatusCode]]:
    """(service, method, request, metadata, the status it is refused with)."""
    jwt = pb.JWTSVIDRequest(audience=["a"]).SerializeToString()
    validate = pb.ValidateJWTSVIDRequest(audience="a", svid="x.y.z").SerializeToString()
    nonce = attestation_pb2.GetEvidenceRequest(nonce=b"n" * 32).SerializeToString()
    bad, none, denied = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                         grpc.StatusCode.PERMISSION_DENIED)
    no_tpm = grpc.StatusCode.UNAVAILABLE
    return [
        # the security header, on every method
        ("workload", "FetchX509SVID", b"", (), bad),
        ("workload", "FetchX509Bundles", b"", (), bad),
        ("workload", "FetchJWTSVID", jwt, (), bad),
        ("workload", "FetchJWTBundles", b"", (), bad),
        ("workload", "ValidateJWTSVID", validate, (), bad),
        ("delegation", "ExchangeToken", _exchange(idp), (), bad),
        ("attestation", "GetEvidence", nonce, (), bad),
        ("attestation", "GetStatus", b"", (), bad),
        # no identity for this caller
        ("workload", "FetchX509SVID", b"", HEADER, none),
        ("workload", "FetchX509Bundles", b"", HEADER, none),
        ("workload", "FetchJWTSVID", jwt, HEADER, none),
        ("workload", "FetchJWTBundles", b"", HEADER, none),
        # (ValidateJWTSVID serves callers without an entry: its refusals are svid.validated
        # records, see test_workload_api.)
        ("delegation", "ExchangeToken", _exchange(idp), HEADER, denied),
        # requests that cannot be carried out (a validator needs no identity: the token is
        # what is wrong)
        ("workload", "ValidateJWTSVID", validate, HEADER, bad),
        ("workload", "FetchJWTSVID", pb.JWTSVIDRequest().SerializeToString(), HEADER, bad),
        ("workload", "ValidateJWTSVID", pb.ValidateJWTSVIDRequest(svid="x").SerializeToString(),
         HEADER, bad),
        # no TPM on this node
        ("attestation", "GetEvidence", nonce, HEADER, no_tpm),
        ("attestation", "GetStatus", b"", HEADER, no_tpm),
    ]


# (ExchangeToken's own refusals come after the agent is known: those are token.exchanged
# records, see test_delegation.)
_IDS = ["header"] * 8 + ["identity"] * 5 + ["request"] * 3 + ["no-tpm"] * 2


@pytest.mark.parametrize("case", range(len(_IDS)),
                         ids=[f"{i}-{n}" for i, n in enumerate(_IDS)])
def test_every_refusal_on_the_workload_socket_is_audited_with_its_method(
    node: Daemon, idp: Idp, case: int,
) -> None:
    service, method, request, metadata, expect = _cases(idp)[case]

    before = len(_denials(node, method))
    code, details, _ = call(node.socket, SVC[service] + method, request, metadata=metadata,
                            stream=method in STREAMS)
    assert code == expect, (code, details)
    after = _denials(node, method, more_than=before)
    assert len(after) == before + 1, after[-2:]
    record = after[-1]
    assert record["result"] == "denied"
    assert record["details"]["status"] == expect.name
    assert record["process"]["pid"] > 0
    assert node.alive()


def test_a_malformed_message_is_refused_and_audited(node: Daemon) -> None:
    before = len(_denials(node, "FetchJWTSVID"))
    code, details, _ = call(node.socket, SVC["workload"] + "FetchJWTSVID", b"\xff\xff\xff")
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "malformed request message")
    after = _denials(node, "FetchJWTSVID", more_than=before)
    assert len(after) == before + 1
