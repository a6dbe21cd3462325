"""Identity resolution with a fake TPM node: `tpm:` selectors come from the node, never from the
caller; a TPM-dependent caller gets TpmUnavailable while the TPM is down, others NoIdentity."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensign.daemon.errors import NoIdentity
from ensign.daemon.identity import Resolver
from ensign.daemon.models import AttestedCaller, Caller
from ensign.daemon.registry import Entry, Registry
from ensign.daemon.tpm.errors import TpmUnavailable
from tests.support.registry import new_entry, open_registry, run


class FakeNode:
    def __init__(self, selectors: frozenset[str] = frozenset(), available: bool = True,
                 problem: str | None = None) -> None:
        self.available = available
        self.problem = problem
        self.selectors = selectors

    def node_selectors(self) -> frozenset[str]:
        return self.selectors


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return open_registry(tmp_path)


def _register(r: Registry, name: str, *selectors: str) -> Entry:
    return run(r.register(new_entry(name, *selectors), 0))


def _caller(*selectors: str) -> AttestedCaller:
    return AttestedCaller(caller=Caller(pid=7, uid=1000, gid=1000, start_ticks=1),
                          selectors=frozenset(selectors), evidence={})


def test_tpm_selectors_come_from_the_node(registry: Registry) -> None:
    on_tpm = _register(registry, "on-tpm", "unix:uid:1000", "tpm:policy:pass")
    node = FakeNode(frozenset({"tpm:policy:pass"}))
    found = Resolver(registry, node).resolve(_caller("unix:uid:1000"))
    assert [e.id for e in found] == [on_tpm.id]


def test_a_caller_cannot_claim_tpm_selectors(registry: Registry) -> None:
    _register(registry, "on-tpm", "unix:uid:1000", "tpm:policy:pass")
    resolver = Resolver(registry, FakeNode(frozenset({"tpm:ek:abc"})))
    forged = _caller("unix:uid:1000", "tpm:policy:pass")
    assert resolver.selectors(forged) == frozenset({"unix:uid:1000", "tpm:ek:abc"})
    with pytest.raises(NoIdentity, match="no entry matches pid 7"):
        resolver.resolve(forged)


def test_without_a_tpm_service_selectors_are_the_callers(registry: Registry) -> None:
    plain = _register(registry, "plain", "unix:uid:1000")
    resolver = Resolver(registry)
    attested = _caller("unix:uid:1000", "unix:gid:1000")
    assert resolver.selectors(attested) == attested.selectors
    assert [e.id for e in resolver.resolve(attested)] == [plain.id]


def test_every_matching_entry_in_id_order(registry: Registry) -> None:
    ids = sorted(_register(registry, n, "unix:uid:1000").id for n in ("x", "y", "z"))
    _register(registry, "other", "unix:uid:1001")
    found = Resolver(registry, FakeNode()).resolve(_caller("unix:uid:1000"))
    assert [e.id for e in found] == ids


def test_tpm_down_is_unavailable_for_tpm_identities_only(registry: Registry) -> None:
    _register(registry, "on-tpm", "unix:uid:1000", "tpm:policy:pass")
    down = FakeNode(available=False, problem="swtpm not answering")
    resolver = Resolver(registry, down)
    with pytest.raises(TpmUnavailable, match=r"^TPM unavailable: swtpm not answering$"):
        resolver.resolve(_caller("unix:uid:1000"))
    # A caller whose entries would not match even with the TPM has no identity, TPM or not.
    with pytest.raises(NoIdentity):
        resolver.resolve(_caller("unix:uid:1001"))


def test_tpm_up_but_policy_failing_is_no_identity(registry: Registry) -> None:
    _register(registry, "on-tpm", "unix:uid:1000", "tpm:policy:pass")
    resolver = Resolver(registry, FakeNode(frozenset({"tpm:policy:fail"})))
    with pytest.raises(NoIdentity) as raised:
        resolver.resolve(_caller("unix:uid:1000"))
    assert type(raised.value) is NoIdentity


def test_suspended_entries_do_not_make_a_tpm_outage_visible(registry: Registry) -> None:
    e = _register(registry, "on-tpm", "unix:uid:1000", "tpm:policy:pass")
    run(registry.transition(e.id, "suspend", "test", "investigating"))
    resolver = Resolver(registry, FakeNode(available=False, problem="down"))
    with pytest.raises(NoIdentity):
        resolver.resolve(_caller("unix:uid:1000"))
