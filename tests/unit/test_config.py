"""Config parsing: defaults, units, and errors that name the key and the reason."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from ensign.daemon import config
from ensign.daemon.errors import ConfigError
from ensign.daemon.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600),
                                               ("7d", 604800), ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [("512MiB", 512 << 20), ("1GiB", 1 << 30),
                                            ("4096", 4096), ("10KB", 10_000)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "5", "1y", "-1s", "1.5h", "s"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_defaults_match_contract() -> None:
    c = config.Config()
    assert c.socket_path == Path("/run/ensign/agent.sock")
    assert c.admin_socket_path == Path("/run/ensign/admin.sock")
    assert c.ca.ttl == timedelta(hours=24) and c.ca.key_type == "ec-p256"
    assert c.svid.x509_ttl == timedelta(hours=1) and c.svid.jwt_ttl == timedelta(minutes=5)
    assert c.attestors.unix.max_hash_bytes == 1 << 30
    assert c.policy.default_allow_audiences is False  # least privilege
    assert c.audit.checkpoint_every == 1000


def test_contract_example_parses() -> None:
    doc = """
trust_domain = "example.org"
socket_path = "/run/ensign/agent.sock"
admin_socket_path = "/run/ensign/admin.sock"
data_dir = "/var/lib/ensign"
log_level = "info"
[ca]
key_type = "ec-p256"
ttl = "24h"
[svid]
x509_ttl = "1h"
jwt_ttl = "5m"
key_type = "ec-p256"
[policy]
default_allow_audiences = false
[attestors.unix]
enabled = true
hash_executables = true
max_hash_bytes = "1GiB"
[attestors.systemd]
enabled = true
[attestors.sigstore]
enabled = false
trusted_root = "/etc/ensign/sigstore/trusted_root.json"
bundle_dirs = ["/etc/ensign/sigstore/bundles"]
[attestors.tpm]
enabled = false
tcti = "device:/dev/tpmrm0"
emulator = false
pcrs = [0, 1, 2, 3, 4, 5, 6, 7]
measure_pcr = 23
[delegation]
enabled = false
max_chain_depth = 3
[[delegation.issuers]]
issuer = "https://idp.example.org"
jwks_file = "/etc/ensign/idp-jwks.json"
audience = "ensign"
[audit]
checkpoint_every = 1000
checkpoint_interval = "60s"
[anomaly]
enabled = true
action = "alert"
[metrics]
listen = ""
"""
    c = config.parse(tomllib.loads(doc))
    assert c.delegation.issuers[0].issuer == "https://idp.example.org"
    assert c.policy.default_allow_audiences is False


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"ca": {"tll": "24h"}}, "ca.tll: unknown key"),
        ({"svid": {"x509_ttl": "forever"}}, "svid.x509_ttl: invalid duration"),
        ({"svid": {"x509_ttl": 3600}}, "svid.x509_ttl: a duration needs a unit"),
        ({"trust_domain": "Example.ORG"}, "trust_domain: trust domain 'Example.ORG'"),
        ({"socket_path": "relative.sock"}, "socket_path: must be an absolute path"),
        ({"attestors": {"tpm": {"pcrs": [0, 99]}}}, "attestors.tpm.pcrs: PCR indexes"),
        ({"anomaly": {"action": "explode"}}, "anomaly.action"),
        ({"ca": {"upstream_cert": "/x.pem"}}, "upstream_cert and upstream_key"),
        ({"attestors": {"unix": {"max_hash_bytes": "lots"}}}, "invalid size"),
    ],
)
def test_errors_name_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(doc, "test.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("test.toml: ")


def test_load_reports_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\x00\xffgarbage = = =")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(tmp_path / "missing.toml")


def test_env_names_the_config(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    path.write_text('trust_domain = "env.example"\n')
    assert config.load(env={"ENSIGN_CONFIG": str(path)}).trust_domain == "env.example"


def test_defaults_render_as_loadable_toml() -> None:
    text = config.to_toml(config.Config())
    assert config.parse(tomllib.loads(text)) == config.Config()


def test_shipped_default_config_is_current() -> None:
    shipped = Path(__file__).resolve().parents[2] / "packaging" / "ensign.toml"
    assert shipped.read_text() == config.to_toml(config.Config()), (
        "packaging/ensign.toml is stale: regenerate with `ensign config defaults`"
    )


def test_one_node_name_for_the_spiffe_id_and_the_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    """`node_name` is read in one place: the top-level key, else `[http] node_name` (its former
    spelling), else the host name's first label; a name that cannot be a SPIFFE ID segment and
    a PostgreSQL role is refused, and two different spellings at once are an error."""
    assert config.node_name(config.parse({"node_name": "node-1"})) == "node-1"
    assert config.node_name(config.parse({"http": {"node_name": "old-1"}})) == "old-1"
    assert config.node_name(config.parse(
        {"node_name": "same", "http": {"node_name": "same"}})) == "same"
    monkeypatch.setattr("socket.gethostname", lambda: "web-7.dc1.example.org")
    assert config.node_name(config.Config()) == "web-7"
    monkeypatch.setattr("socket.gethostname", lambda: "_odd_")
    assert config.node_name(config.Config()) == "node"
    for bad in ({"node_name": "a/b"}, {"node_name": ".."}, {"node_name": "x" * 64},
                {"http": {"node_name": "a/b"}}):
        with pytest.raises(ConfigError, match="node_name: must be 1-63 letters"):
            config.parse(bad)
    differ = r"node_name and http\.node_name \(its former spelling\) differ"
    with pytest.raises(ConfigError, match=differ):
        config.parse({"node_name": "a", "http": {"node_name": "b"}})
    assert "node_name" not in config.to_toml(config.Config()).split("[http]")[1].split("[")[0]
