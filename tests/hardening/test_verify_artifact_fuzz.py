"""Fuzz `ensign verify-artifact`: hypothesis-made bundle bytes (random, and valid bundles with
one field replaced or one byte flipped) and command lines. Whatever the input: no exception
escapes `main()`, the exit code is 0, 64, 65 or 66, a refusal is one line on stderr, and only
an untouched bundle verifies. `make soak` multiplies the examples.
"""

from __future__ import annotations

import copy
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensign.daemon.cli import main
from tests.support.hardening import soak
from tests.support.sigstore import GHA, PrivateSigstore

IDENTITY = "https://github.com/acme/agent/.github/workflows/release.yml@refs/tags/v1.2.3"
EXITS = {0, 64, 65, 66}
FUZZ = settings(max_examples=soak(40, 400), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["verify-artifact", *args])
        except SystemExit as e:  # argparse: usage errors, --help
            code = e.code if isinstance(e.code, int) else -1
    return code, out.getvalue(), err.getvalue()


def check(code: int, err: str) -> None:
    assert code in EXITS, err
    assert "Traceback" not in err
    if code:
        assert len(err.strip().splitlines()) == 1, err


class World:
    def __init__(self, base: Path) -> None:
        self.fulcio = PrivateSigstore()
        self.root = base / "trusted_root.json"
        self.root.write_text(json.dumps(self.fulcio.trusted_root()))
        self.art = base / "agent"
        self.art.write_bytes(b"agent build\n" * 50)
        data = self.art.read_bytes()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.pub = base / "cosign.pub"
        self.pub.write_bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.bundles = {
            "v1": self.fulcio.sign(data, IDENTITY),
            "v2": self.fulcio.sign(data, IDENTITY, rekor="v2", witnesses=1),
            "dsse-v2": self.fulcio.attest(data, "agent", IDENTITY, "b", rekor="v2",
                                          entry="dsse"),
            "key-v2": self.fulcio.sign_with_key(data, self.key, rekor="v2"),
        }
        self.bundle = base / "bundle.json"

    def verify(self, raw: bytes, name: str) -> tuple[int, str, str]:
        self.bundle.write_bytes(raw)
        flags = (["--key", str(self.pub)] if name.startswith("key") else
                 ["--cert-identity", IDENTITY, "--cert-oidc-issuer", GHA])
        return run(str(self.art), "--bundle", str(self.bundle), "--trusted-root",
                   str(self.root), *flags)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("fuzz"))


def test_untouched_bundles_verify(world: World) -> None:
    for name, doc in world.bundles.items():
        code, _, err = world.verify(json.dumps(doc).encode(), name)
        assert code == 0, (name, err)


@FUZZ
@given(raw=st.binary(max_size=4096) | st.text(max_size=2048).map(str.encode))
def test_random_bundle_bytes(world: World, raw: bytes) -> None:
    code, _, err = world.verify(raw, "v2")
    check(code, err)
    assert code != 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*prefix, i))
    return found


#: Fields no verifier binds: the key hint is opaque, the digest algorithm is implied by the
#: digest, the entry's own log index is only reported (Rekor v1 shards number differently).
NOT_BINDING = {"hint", "algorithm", "mediaType", "logIndex", "keyid"}


@FUZZ
@given(data=st.data(), name=st.sampled_from(["v1", "v2", "dsse-v2", "key-v2"]),
       value=JSON)
def test_one_field_replaced(world: World, data: st.DataObject, name: str, value: Any) -> None:
    doc = copy.deepcopy(world.bundles[name])
    path = data.draw(st.sampled_from(_paths(doc)))
    node = doc
    for step in path[:-1]:
        node = node[step]
    if str(node[path[-1]]) == str(value):  # "5" and 5 mean the same log index
        return
    node[path[-1]] = value
    code, _, err = world.verify(json.dumps(doc).encode(), name)
    check(code, err)
    # A managed key has no validity period to place in time: its signed timestamps are
    # checked when present, not required (as cosign's --key).
    optional = name.startswith("key") and path[-1] in {"timestampVerificationData",
                                                        "rfc3161Timestamps"}
    # messageDigest only names the artifact (protobuf-specs: clients MUST NOT verify with it):
    # absent (null) it may be; present, it must match the artifact's digest.
    optional = optional or (path[-2:] == ("messageSignature", "messageDigest") and value is None)
    if path[-1] not in NOT_BINDING and not optional:
        assert code != 0, path


@FUZZ
@given(data=st.data(), name=st.sampled_from(["v1", "v2", "dsse-v2", "key-v2"]))
def test_one_byte_flipped(world: World, data: st.DataObject, name: str) -> None:
    raw = bytearray(json.dumps(world.bundles[name]).encode())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    code, _, err = world.verify(bytes(raw), name)
    check(code, err)


FLAGS = ["--bundle", "--cert-identity", "--cert-identity-regexp", "--certificate-identity",
         "--cert-oidc-issuer", "--cert-oidc-issuer-regexp", "--certificate-oidc-issuer-regexp",
         "--key", "--trusted-root", "--trust-config", "--provenance", "-o", "--output"]


@FUZZ
@given(data=st.data())
def test_command_lines(world: World, data: st.DataObject) -> None:
    values = st.sampled_from([str(world.art), str(world.root), str(world.pub), "", "json",
                              "text", "([", ".*", "sha256:" + "a" * 64, "sha256:zz",
                              IDENTITY, GHA, "/nonexistent", "-", "a\nb", "\x1b[31m"]) | st.text(
        max_size=30).filter(lambda s: "\0" not in s)
    args: list[str] = [data.draw(values)]
    for _ in range(data.draw(st.integers(0, 6))):
        args.append(data.draw(st.sampled_from(FLAGS)))
        if data.draw(st.booleans()):
            args.append(data.draw(values))
    code, _, err = run(*args)
    check(code, err)
