"""Run containment: nothing a process starts outlives it, `setsid` or not. Real processes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from corral.runtime import HostRuntime, LaunchSpec, Process
from corral.runtime._contain import (
    Containment,
    ContainSupport,
    contain_support,
    kill_run,
    marked_pids,
    run_pids,
)
from corral.runtime.host import feed_stdin, start_process
from tests.processes import alive

PATH = {"PATH": "/usr/bin:/bin"}


class Collect:
    def __init__(self) -> None:
        self.data = b""

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk


def run_env() -> dict[str, str]:
    return {**PATH, "CORRAL_RUN_ID": f"test-{uuid.uuid4().hex[:12]}"}


async def read_pid(path: Path, timeout: float = 5.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{path} was not written")


def test_this_machine_offers_a_cgroup() -> None:
    # The development and CI machines have writable cgroups; the marker is a fallback.
    support = contain_support()
    assert support.kind != "marker", support.describe()


async def test_a_setsid_child_that_holds_the_output_does_not_keep_a_process_open(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        f"setsid sh -c 'echo $$ > {pidfile}; echo from-child; sleep 300' & "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done; exit 0"
    )
    spec = LaunchSpec(argv=["/bin/sh", "-c", script], cwd=tmp_path, env=run_env())
    process = await HostRuntime().launch(spec)
    out = Collect()
    loop = asyncio.get_running_loop()
    began = loop.time()
    code = await asyncio.wait_for(process.pump(out), 15)
    took = loop.time() - began
    child = await read_pid(pidfile)
    assert code == 0  # the main process's outcome
    assert took < process.linger + 3  # not until the child closes the output
    assert b"from-child" in out.data
    assert not alive(child)


async def test_a_background_child_with_its_own_output_is_killed_after_the_grace(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 > /dev/null 2>&1 & echo $! > {pidfile}; exit 0"
    process = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", script], cwd=tmp_path, env=run_env())
    )
    assert await asyncio.wait_for(process.pump(Collect()), 15) == 0
    assert not alive(int(pidfile.read_text()))


async def test_a_child_that_finishes_within_the_grace_is_waited_for(tmp_path: Path) -> None:
    script = "(sleep 0.3; echo late) & echo early"
    process = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", script], cwd=tmp_path, env=run_env())
    )
    out = Collect()
    assert await asyncio.wait_for(process.pump(out), 15) == 0
    assert out.data == b"early\nlate\n"


async def test_stop_kills_a_setsid_child_that_ignores_term(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        f"setsid sh -c 'trap \"\" TERM; echo $$ > {pidfile}; while :; do sleep 0.05; done' "
        "> /dev/null 2>&1 & wait"
    )
    process = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", script], cwd=tmp_path, env=run_env())
    )
    pump = asyncio.create_task(process.pump(Collect()))
    child = await read_pid(pidfile)
    await process.stop(grace=0.3)
    await asyncio.wait_for(pump, 10)
    assert not alive(child)


async def test_kill_run_ends_every_process_of_the_run_and_nothing_else(tmp_path: Path) -> None:
    env = run_env()
    run_id = env["CORRAL_RUN_ID"]
    pidfile = tmp_path / "daemon.pid"
    daemon = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' > /dev/null 2>&1 < /dev/null &"
    first = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", daemon + " exec sleep 300"], cwd=tmp_path, env=env)
    )
    other = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", "exec sleep 300"], cwd=tmp_path, env=run_env())
    )
    try:
        child = await read_pid(pidfile)
        assert {first.pid, child} <= run_pids(run_id)
        assert kill_run(run_id)
        assert run_pids(run_id) == set()
        assert not alive(first.pid)
        assert not alive(child)
        assert alive(other.pid)  # another run's process is not touched
    finally:
        await other.stop(0.1)
        await first.stop(0.1)


async def test_without_a_cgroup_the_marker_finds_a_setsid_child(tmp_path: Path) -> None:
    marker_only = ContainSupport("marker", None, "disabled by the test")
    env = run_env()
    run_id = env["CORRAL_RUN_ID"]
    pidfile = tmp_path / "daemon.pid"
    script = (
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' > /dev/null 2>&1 < /dev/null & "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done"
    )
    containment = Containment.create(marker_only, run_id)
    assert containment.path is None
    proc = await start_process(
        ["/bin/sh", "-c", script], cwd=tmp_path, env=env, stdin=None, containment=containment
    )
    await feed_stdin(proc, None)
    process = Process(proc, containment)
    assert await asyncio.wait_for(process.pump(Collect()), 15) == 0
    child = await read_pid(pidfile)
    assert alive(child)  # a process alone cannot see it without a cgroup
    assert marked_pids(run_id) == [child]
    assert kill_run(run_id, marker_only)
    assert not alive(child)


@pytest.mark.parametrize("pwd", [None, "/some where"])
async def test_the_containment_stub_keeps_the_environment_exact(
    tmp_path: Path, pwd: str | None
) -> None:
    env = run_env()
    if pwd is not None:
        env["PWD"] = pwd
    process = await HostRuntime().launch(LaunchSpec(argv=["/usr/bin/env"], cwd=tmp_path, env=env))
    out = Collect()
    assert await process.pump(out) == 0
    assert sorted(out.data.decode().splitlines()) == sorted(f"{k}={v}" for k, v in env.items())


async def test_no_cgroup_is_left_behind(tmp_path: Path) -> None:
    support = contain_support()
    if support.base is None:
        pytest.skip("no cgroup here: " + support.describe())
    env = run_env()
    process = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", "sleep 300 > /dev/null &"], cwd=tmp_path, env=env)
    )
    await process.pump(Collect())
    assert not list(support.base.glob(f"{env['CORRAL_RUN_ID']}.*"))
