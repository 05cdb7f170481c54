"""The host runtime's private /tmp and /app/static (corral.runtime._private), process by
process: what the run sees, what it cannot change, and the fallback to TMPDIR only.

Run directories live under /var/tmp: one under /tmp is exactly the case where a private
/tmp would hide the run's own files, and corral falls back (tested below).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import RunError
from corral.runtime import HostRuntime, LaunchSpec
from corral.runtime._children import ON_LOOP_ENV, _spawn_pool
from corral.runtime._contain import MARKER, contain_support, run_cgroups
from corral.runtime._private import (
    MountSupport,
    make_static,
    mount_support,
    note_shared_tmp,
    tmp_blocked,
)


class Collect:
    def __init__(self) -> None:
        self.data = b""

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk


@pytest.fixture
def base() -> Iterator[Path]:
    made = Path(tempfile.mkdtemp(prefix="corral-private-", dir="/var/tmp"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def needs_mounts() -> MountSupport:
    support = mount_support()
    if support.unshare is None:
        pytest.skip(f"no mount namespace for host runs here: {support.why_not}")
    return support


async def run(runtime: HostRuntime, spec: LaunchSpec) -> tuple[int, str]:
    out = Collect()
    code = await (await runtime.launch(spec)).pump(out)
    return code, out.data.decode()


def spec_in(base: Path, script: str | list[str], **extra: object) -> LaunchSpec:
    tmp = base / "run" / ".corral" / "tmp"
    tmp.mkdir(parents=True, mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp)}
    return LaunchSpec(
        argv=["/bin/sh", "-c", script] if isinstance(script, str) else script,
        cwd=base / "run",
        env=env,
        tmp=tmp,
        **extra,  # type: ignore[arg-type]
    )


async def test_a_host_run_gets_its_own_tmp(base: Path) -> None:
    needs_mounts()
    mine = f"corral-test-{uuid.uuid4().hex}"
    (Path("/tmp") / mine).write_text("host's\n")  # on the host's /tmp: not the run's
    try:
        spec = spec_in(
            base, f"ls -A /tmp; echo x > /tmp/written; if test -e /tmp/{mine}; then echo SEEN; fi"
        )
        code, out = await run(HostRuntime(), spec)
    finally:
        (Path("/tmp") / mine).unlink()
    assert code == 0, out
    assert out.split() == [], out  # empty at first, and nothing of the host's
    assert spec.tmp is not None and (spec.tmp / "written").read_text() == "x\n"
    assert not Path("/tmp/written").exists()


async def test_the_environment_stays_exactly_as_given(base: Path) -> None:
    needs_mounts()
    spec = spec_in(base, ["/usr/bin/env"])  # not through a shell, which adds its PWD
    code, out = await run(HostRuntime(), spec)
    assert code == 0, out
    assert sorted(out.splitlines()) == sorted(f"{k}={v}" for k, v in spec.env.items())
    with_pwd = spec_in(base / "b", ["/usr/bin/printenv", "PWD"])
    with_pwd = LaunchSpec(
        argv=with_pwd.argv, cwd=with_pwd.cwd, env={**with_pwd.env, "PWD": "/x"}, tmp=with_pwd.tmp
    )
    code, out = await run(HostRuntime(), with_pwd)
    assert (code, out) == (0, "/x\n")


async def test_app_static_shows_the_agent_and_shared_read_only(base: Path) -> None:
    needs_mounts()
    agent, shared = base / "agents" / "dev", base / "shared"
    (shared / "team").mkdir(parents=True)
    agent.mkdir(parents=True)
    (agent / "SKILL.md").write_text("# dev\n")
    (shared / "team" / "policy.md").write_text("review everything\n")
    view = make_static(agent, shared)
    script = (
        "cd /app/static && ls && cat shared/team/policy.md; "
        "touch /app/static/SKILL.md /app/static/shared/new /app/static/new 2>/dev/null "
        "|| echo READ-ONLY"
    )
    code, out = await run(HostRuntime(), spec_in(base, script, static=view))
    assert code == 0, out
    assert out.split("\n") == ["SKILL.md", "shared", "review everything", "READ-ONLY", ""]
    assert not (shared / "new").exists()
    assert not (base / "view").exists()  # the view is a tmpfs of the run's, no directory


async def test_without_a_mount_namespace_only_tmpdir_is_private(
    base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    note_shared_tmp.cache_clear()
    runtime = HostRuntime(MountSupport(None, "corral does not run as root"))
    mine = f"corral-test-{uuid.uuid4().hex}"
    spec = spec_in(base, f'echo x > /tmp/{mine}; echo "$TMPDIR"')
    try:
        with caplog.at_level(logging.WARNING, logger="corral.run"):
            code, out = await run(runtime, spec)
            await run(runtime, spec)  # said once, not per run
        assert (code, out.strip()) == (0, str(spec.tmp))
        assert (Path("/tmp") / mine).exists()  # the host's /tmp
    finally:
        (Path("/tmp") / mine).unlink(missing_ok=True)
    said = [r.getMessage() for r in caplog.records if "share the host's /tmp" in r.getMessage()]
    assert len(said) == 1 and "corral does not run as root" in said[0], said


async def test_a_run_directory_under_tmp_keeps_the_host_tmp(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Under a private /tmp the run would lose its own directory: corral leaves /tmp alone.
    needs_mounts()
    note_shared_tmp.cache_clear()
    assert Path("/tmp") in tmp_path.parents
    with caplog.at_level(logging.WARNING, logger="corral.run"):
        code, out = await run(HostRuntime(), spec_in(tmp_path, "pwd"))
    assert (code, out.strip()) == (0, str(tmp_path / "run"))
    assert any("run directories" in r.getMessage() for r in caplog.records)


def test_what_a_private_tmp_would_hide_is_named(base: Path) -> None:
    cwd = base / "run"
    assert tmp_blocked(cwd, {"PATH": "/usr/bin:/bin"}, ()) is None
    assert tmp_blocked(Path("/tmp/p/run"), {}, ()) is not None
    found = tmp_blocked(cwd, {"PATH": "/usr/bin:/tmp/corral-bin"}, ())
    assert found is not None and "$PATH" in found and "/tmp/corral-bin" in found
    found = tmp_blocked(cwd, {}, (Path("/tmp/home/credentials/github_token/default"),))
    assert found is not None and found.startswith("/tmp/home/credentials")
    # A variable of the run's own may well mean the run's /tmp.
    assert tmp_blocked(cwd, {"REPO": "/tmp/repo"}, ()) is None
    # Resolved too: a link into /tmp is under /tmp.
    link = base / "link"
    link.symlink_to("/tmp")
    assert tmp_blocked(cwd, {"PATH": str(link)}, ()) is not None


def _logging_wrapper(directory: Path, program: str, log: Path) -> str:
    """A stand-in for ``program`` that notes each call in ``log`` and runs the real one."""
    real = shutil.which(program)
    assert real is not None, program
    wrapper = directory / program
    wrapper.write_text(f'#!/bin/sh\necho "{program} $*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


async def test_no_program_runs_before_the_run_s_own_to_make_its_mounts(base: Path) -> None:
    """The namespace and the mounts are made by corral itself, in the thread that starts
    the process: no unshare, shell or mount process (each cost milliseconds) runs first."""
    real = needs_mounts()
    tools, log = base / "tools", base / "calls.log"
    tools.mkdir()
    support = MountSupport(
        _logging_wrapper(tools, "unshare", log),
        mount=_logging_wrapper(tools, "mount", log),
        mkdir=_logging_wrapper(tools, "mkdir", log),
        static=real.static,
    )
    agent = base / "agents" / "dev"
    (agent / "docs").mkdir(parents=True)
    (agent / "SKILL.md").write_text("# dev\n")
    spec = spec_in(
        base, "ls /app/static; ls -A /tmp; echo x > /tmp/mine", static=make_static(agent, None)
    )
    code, out = await run(HostRuntime(support), spec)
    assert (code, out.split()) == (0, ["SKILL.md", "docs"]), out
    assert spec.tmp is not None and (spec.tmp / "mine").read_text() == "x\n"
    assert not log.exists(), log.read_text()


async def test_the_mounts_are_the_same_as_when_started_on_the_loop(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started on the event loop (``unshare`` and a script), a run sees the same mounts,
    with the same flags, as one whose mounts corral made itself."""
    needs_mounts()
    agent, shared = base / "agents" / "dev", base / "shared"
    agent.mkdir(parents=True)
    shared.mkdir()
    (agent / "SKILL.md").write_text("# dev\n")
    view = make_static(agent, shared)
    script = "grep -E ' /(tmp|app/static)[ /]' /proc/self/mountinfo | cut -d' ' -f4-"
    seen = []
    for on_loop in ("", "1"):
        monkeypatch.setenv(ON_LOOP_ENV, on_loop)
        code, out = await run(HostRuntime(), spec_in(base / f"l{on_loop}", script, static=view))
        assert code == 0, out
        seen.append(out.replace(f"/l{on_loop}/run/", "/RUN/"))
    assert seen[0] == seen[1]
    assert len(seen[0].splitlines()) == 4, seen[0]  # the view, two entries, /tmp
    assert " /app/static ro," in seen[0] and "/app/static/SKILL.md ro," in seen[0], seen[0]


async def test_a_mount_that_fails_fails_the_launch_and_corral_keeps_its_namespace(
    base: Path,
) -> None:
    """A mount corral cannot make is a RunError at launch (the run's cgroup removed), and
    neither that nor a run's namespace is ever corral's own: its threads keep the host's
    /tmp and mount namespace."""
    needs_mounts()
    ours = os.readlink("/proc/thread-self/ns/mnt")
    spec = spec_in(base, "true")
    assert spec.tmp is not None
    gone = LaunchSpec(
        argv=spec.argv, cwd=spec.cwd, env={**spec.env, MARKER: "failing-mount"},
        tmp=spec.tmp / "missing",
    )  # fmt: skip
    with pytest.raises(RunError, match="its own /tmp"):
        await HostRuntime().launch(gone)
    assert run_cgroups(contain_support(), "failing-mount") == []
    code, out = await run(HostRuntime(), spec_in(base / "b", "readlink /proc/self/ns/mnt"))
    assert code == 0 and out.strip() != ours, out
    assert os.readlink("/proc/thread-self/ns/mnt") == ours
    loop, where = asyncio.get_running_loop(), "/proc/thread-self/ns/mnt"
    spawners = [loop.run_in_executor(_spawn_pool(), os.readlink, where) for _ in range(8)]
    assert set(await asyncio.gather(*spawners)) == {ours}  # the threads that start runs


async def test_runs_started_at_once_each_get_their_view(base: Path) -> None:
    """Many processes started at the same moment (a burst of runs) each get their mounts:
    what one start does never makes another's mount fail (a descriptor one thread opened
    on its view, inherited by a process another thread started, once made the view's
    read-only remount busy)."""
    needs_mounts()
    agent = base / "agents" / "dev"
    agent.mkdir(parents=True)
    for name in ("SKILL.md", "config.toml", "notes.md"):
        (agent / name).write_text(name)
    view = make_static(agent, None)
    runtime = HostRuntime()

    async def one(i: int) -> tuple[int, str]:
        return await run(runtime, spec_in(base / str(i), "cat /app/static/notes.md", static=view))

    for round_ in range(5):
        done = await asyncio.gather(*(one(round_ * 12 + i) for i in range(12)))
        assert set(done) == {(0, "notes.md")}, done
