"""The attestation pipeline with fake attestors and a fake /proc: attestors run concurrently, a
failing or slow one is dropped, all failing is an AttestationError, results are cached per
process image, and a caller that exec'd or was replaced is refused."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

import pytest

from ensign.attestors.base import AttestorError
from ensign.daemon.errors import AttestationError, CallerGone
from ensign.daemon.identity import AttestationPipeline
from ensign.daemon.models import Attestation, Caller

PID, TICKS = 4242, 777


class FakeAttestor:
    name: ClassVar[str] = "fake"

    def __init__(self, name: str, selectors: tuple[str, ...] = (),
                 behave: Callable[[], Awaitable[None]] | None = None,
                 evidence: dict[str, str] | None = None) -> None:
        self.name = name  # type: ignore[misc]
        self.selectors = selectors
        self.behave = behave
        self.evidence = evidence or {}
        self.calls = 0

    async def attest(self, caller: Caller) -> Attestation:
        self.calls += 1
        if self.behave is not None:
            await self.behave()
        return Attestation(selectors=self.selectors, evidence=self.evidence)

    def state(self) -> str:
        return "ready"

    async def aclose(self) -> None:
        pass


def _fail(message: str) -> Callable[[], Awaitable[None]]:
    async def fail() -> None:
        raise AttestorError(message)
    return fail


class FakeProc:
    """/proc/<PID>/{stat,exe} under a temp dir; exe is a symlink to an image file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / str(PID)
        self.dir.mkdir()
        self.images = root / "images"
        self.images.mkdir()
        self.set_ticks(TICKS)
        self.exec("agent-v1")

    def set_ticks(self, ticks: int) -> None:
        rest = ["S"] + ["0"] * 18 + [str(ticks)] + ["0"] * 5
        (self.dir / "stat").write_text(f"{PID} (fake agent) {' '.join(rest)}\n")

    def exec(self, image: str) -> None:
        (self.images / image).write_bytes(image.encode())
        link = self.dir / "exe"
        link.unlink(missing_ok=True)
        link.symlink_to(self.images / image)

    def caller(self) -> Caller:
        st = os.stat(self.dir / "exe")
        return Caller(pid=PID, uid=1000, gid=1000, start_ticks=TICKS, exe=(st.st_dev, st.st_ino))


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


def _pipeline(proc: FakeProc, *attestors: FakeAttestor, timeout: float = 5.0,
              measure: Callable[[str, str], Awaitable[None]] | None = None
              ) -> AttestationPipeline:
    return AttestationPipeline(attestors, proc_root=proc.root, timeout=timeout,
                               measure=measure)


def test_attestors_run_concurrently_and_selectors_are_prefixed(proc: FakeProc) -> None:
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    def meet(me: str, other: str) -> Callable[[], Awaitable[None]]:
        async def behave() -> None:  # each waits for the other: only concurrency gets past
            started[me].set()
            await started[other].wait()
        return behave

    a = FakeAttestor("unix", ("uid:1000",), meet("a", "b"), {"exe_path": "/bin/agent"})
    b = FakeAttestor("systemd", ("unit:agent.service",), meet("b", "a"))
    got = asyncio.run(_pipeline(proc, a, b, timeout=2).attest(proc.caller()))
    assert got.selectors == frozenset({"unix:uid:1000", "systemd:unit:agent.service"})
    assert got.evidence == {"unix.exe_path": "/bin/agent"}
    assert got.fresh is True


def test_a_failing_attestor_is_dropped_and_the_result_not_cached(proc: FakeProc) -> None:
    good = FakeAttestor("unix", ("uid:1000",))
    bad = FakeAttestor("sigstore", ("identity:x",), _fail("no bundle"))
    pipeline = _pipeline(proc, good, bad)
    caller = proc.caller()
    got = asyncio.run(pipeline.attest(caller))
    assert got.selectors == frozenset({"unix:uid:1000"})
    assert pipeline.cached(caller) is None  # a partial result is tried again next time
    asyncio.run(pipeline.attest(caller))
    assert (good.calls, bad.calls) == (2, 2)


def test_all_attestors_failing_is_an_attestation_error(proc: FakeProc) -> None:
    a = FakeAttestor("unix", behave=_fail("cannot read /proc"))
    b = FakeAttestor("systemd", behave=_fail("no cgroup"))
    with pytest.raises(AttestationError) as raised:
        asyncio.run(_pipeline(proc, a, b).attest(proc.caller()))
    assert str(raised.value) == ("all attestors failed: unix: cannot read /proc; "
                                 "systemd: no cgroup")
    assert type(raised.value) is AttestationError


def test_a_slow_attestor_times_out_and_is_dropped(proc: FakeProc) -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    fast = FakeAttestor("unix", ("uid:1000",))
    slow = FakeAttestor("tpm", ("policy:pass",), hang)
    got = asyncio.run(_pipeline(proc, fast, slow, timeout=0.05).attest(proc.caller()))
    assert got.selectors == frozenset({"unix:uid:1000"})
    with pytest.raises(AttestationError, match=r"^all attestors failed: tpm: timed out after "
                                               r"0.05s$"):
        asyncio.run(_pipeline(proc, slow, timeout=0.05).attest(proc.caller()))


def test_cache_hit_for_the_same_image_and_miss_after_a_change(proc: FakeProc) -> None:
    a = FakeAttestor("unix", ("uid:1000",))
    pipeline = _pipeline(proc, a)
    caller = proc.caller()
    first = asyncio.run(pipeline.attest(caller))
    second = asyncio.run(pipeline.attest(caller))
    assert a.calls == 1 and second.fresh is False and second.selectors == first.selectors
    assert pipeline.cached(caller) == second
    # Same inode, new ctime (the file was written or chmod'ed): another image, attested again.
    os.chmod(proc.images / "agent-v1", 0o700)
    assert pipeline.cached(caller) is None
    assert asyncio.run(pipeline.attest(caller)).fresh is True
    assert a.calls == 2


def test_a_caller_that_exec_d_another_program_is_refused(proc: FakeProc) -> None:
    a = FakeAttestor("unix", ("uid:1000",))
    pipeline = _pipeline(proc, a)
    caller = proc.caller()
    asyncio.run(pipeline.attest(caller))
    proc.exec("agent-v2")  # same pid and start time, another executable
    with pytest.raises(CallerGone, match="runs another program than the one that connected"):
        asyncio.run(pipeline.attest(caller))
    with pytest.raises(CallerGone):
        pipeline.cached(caller)


def test_a_pid_taken_over_during_attestation_is_refused(proc: FakeProc) -> None:
    async def replaced() -> None:  # while the attestor looks, the process exits, pid reused
        proc.set_ticks(TICKS + 1)

    a = FakeAttestor("unix", ("uid:1000",), replaced)
    with pytest.raises(CallerGone, match=f"pid {PID} now belongs to another process"):
        asyncio.run(_pipeline(proc, a).attest(proc.caller()))


def test_a_gone_caller_is_refused(proc: FakeProc) -> None:
    caller = proc.caller()
    (proc.dir / "stat").unlink()
    with pytest.raises(CallerGone, match=f"caller pid {PID} exited"):
        asyncio.run(_pipeline(proc, FakeAttestor("unix", ("uid:1",))).attest(caller))


def test_measured_launch_is_recorded_and_its_failure_does_not_fail_attestation(
    proc: FakeProc,
) -> None:
    measured: list[tuple[str, str]] = []

    async def measure(sha: str, path: str) -> None:
        measured.append((sha, path))
        raise RuntimeError("TPM is down")

    a = FakeAttestor("unix", ("uid:1000",), evidence={"exe_sha256": "ab" * 32,
                                                      "exe_path": "/bin/agent"})
    got = asyncio.run(_pipeline(proc, a, measure=measure).attest(proc.caller()))
    assert got.selectors == frozenset({"unix:uid:1000"})
    assert measured == [("ab" * 32, "/bin/agent")]
