"""Fuzz the command line: generated config files and argument lists for every command. The CLI
exits with one of its documented codes and at most one line on stderr, never a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.daemon import REPO, Daemon
from tests.support.fuzz import SLOW, assert_cli_result, cli_batch, configs, serving


@SLOW
@given(docs=st.lists(configs(), min_size=5, max_size=5))
def test_config_check_on_generated_files(fuzzed: Daemon, docs: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        argvs = []
        for i, text in enumerate(docs):
            p = Path(tmp) / f"c{i}.toml"
            p.write_text(text)
            argvs.append(["config", "check", "--config", str(p)])
        for r in cli_batch(fuzzed, argvs, Path(tmp)):
            assert assert_cli_result(r) in (0, 78), r


def test_config_check_defaults_pass(fuzzed: Daemon) -> None:
    [r] = cli_batch(fuzzed, [["config", "check", "--config",
                              str(REPO / "packaging" / "ensign.toml")]], REPO)
    assert assert_cli_result(r) == 0, r


# Every command but the ones that run forever by design (`daemon`, `watch`, `helper`).
COMMANDS = [
    ["config", "check"], ["config", "defaults"], ["fetch", "x509"], ["fetch", "jwt"],
    ["fetch", "bundles"], ["validate", "jwt"], ["healthcheck"], ["agent", "register"],
    ["agent", "list"], ["agent", "show"], ["agent", "update"], ["agent", "delete"],
    ["agent", "suspend"], ["agent", "resume"], ["agent", "decommission"], ["agent", "apply"],
    ["role", "create"], ["role", "list"], ["role", "show"], ["role", "update"],
    ["role", "delete"], ["audit", "list"], ["audit", "export"], ["audit", "verify"],
    ["token", "exchange"], ["token", "verify"], ["token", "inspect"],
    ["delegation", "grant"], ["delegation", "revoke"], ["delegation", "list"],
    ["anomaly", "list"], ["status"], ["log-level"], ["verify-artifact"], ["tpm", "challenge"],
    ["tpm", "verify-evidence"],
]  # `tpm status|quote|policy` without a TPM: see test_tpm_commands_without_a_tpm_exit_cleanly
FLAGS = ["--name", "--selector", "--owner", "--audience", "--token", "--spiffe-id", "--kind",
         "--scope", "--ttl", "--x509-ttl", "--jwt-ttl", "--expires-at", "--since", "--until",
         "--limit", "--type", "--format", "--output", "-o", "--data-dir", "--config",
         "--reason", "--bundle", "--nonce", "--file", "--subject-token", "--metadata",
         "--max-ttl", "--agent", "--subject", "--issuer", "--from-checkpoint", "--timeout",
         "--cert", "--federates-with", "--clear-roles", "--no-expiry"]
_ARG = st.one_of(
    st.sampled_from(FLAGS),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
            max_size=20),
    st.sampled_from(["json", "text", "jsonl", "ocsf", "-", "unix:uid:0", "1s", "-1s", "agt_x",
                     "2026-13-45T99:00:00Z", "spiffe://", "../../etc/passwd", "nan", "1e999",
                     "99999999999d", "4000d", "99999999999999999999999", "-1"]),
)
argvs = st.one_of(
    st.tuples(st.sampled_from(COMMANDS), st.lists(_ARG, max_size=6)).map(lambda t: t[0] + t[1]),
    st.lists(_ARG, max_size=5),
)


@SLOW
@given(batch=st.lists(argvs, min_size=6, max_size=6))
def test_cli_arguments(fuzzed: Daemon, batch: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for r in cli_batch(fuzzed, batch, Path(tmp)):
            assert_cli_result(r)
    serving(fuzzed)


@pytest.mark.parametrize("argv", [["tpm", "status"], ["tpm", "policy", "--out", "/dev/null"],
                                  ["tpm", "quote", "--nonce", "00" * 16, "--out", "/dev/null"]])
def test_tpm_commands_without_a_tpm_exit_cleanly(fuzzed: Daemon, argv: list[str],
                                                 tmp_path: Path) -> None:
    [r] = cli_batch(fuzzed, [argv], tmp_path)
    assert assert_cli_result(r) == 69 and "tpm" in r["stderr"].lower(), r


@pytest.mark.parametrize("argv", [
    ["audit", "list", "--limit", "99999999999999999999999"],
    ["audit", "verify", "--from-checkpoint", "-1"],
    ["token", "exchange", "--audience", "a", "--ttl", "99999999999d"],
    ["role", "create", "r", "--audience", "a", "--max-ttl", "99999999999999999999s"],
    ["audit", "export", "--format", "ocsf", "--since", "99999999d"],
], ids=["limit", "checkpoint", "ttl", "max-ttl", "since"])
def test_out_of_range_numbers_are_one_line_usage_errors(fuzzed: Daemon, argv: list[str],
                                                        tmp_path: Path) -> None:
    # These printed a traceback (int64 overflow in protobuf, timedelta overflow) before.
    [r] = cli_batch(fuzzed, [argv], tmp_path)
    assert assert_cli_result(r) == 64, r
    assert "out of range" in r["stderr"] or "too long" in r["stderr"], r
