"""Every process a run starts is gone when the run ends (issue 13, item 2).

Real processes on the host runtime, both stores: a `setsid` child of a pre hook, of a
`` !`cmd` `` and of the agent; a same-group background child; a child that holds the
run's output; a timeout, a kill, and the clean-up of a dead scheduler's runs.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from corral.project import load_project
from corral.runtime import HostRuntime, LaunchSpec
from corral.scheduler.executor import RunExecutor
from corral.scheduler.orphans import reap_orphans
from corral.store import RunState, Store
from tests.processes import alive
from tests.scheduler.test_executor import Collect, claim, make_project


def daemon(pidfile: Path, trap_term: bool = False) -> str:
    """Shell text that starts a `setsid` child (out of the process group) that writes
    its pid to ``pidfile`` and loops for ever, with its output detached; then waits until
    the child is running."""
    trap = 'trap "" TERM; ' if trap_term else ""
    inner = f"{trap}echo $$ > {pidfile}; while :; do sleep 0.05; done"
    started = f"while [ ! -s {pidfile} ]; do sleep 0.01; done;"
    return f"setsid sh -c '{inner}' > /dev/null 2>&1 < /dev/null & {started}"


def pid_in(path: Path) -> int:
    return int(path.read_text())


async def wait_file(path: Path, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (path.exists() and path.read_text().strip()):
        if loop.time() > deadline:
            raise TimeoutError(f"{path} was not written")
        await asyncio.sleep(0.02)


def hooks(pre: list[str]) -> str:
    return f"\n[hooks]\npre = {json.dumps(pre)}\n"


async def test_setsid_children_of_a_pre_hook_and_of_dynamic_context_die_with_the_run(
    tmp_path: Path, store: Store
) -> None:
    hook_pid, context_pid = tmp_path / "hook.pid", tmp_path / "context.pid"
    project = make_project(tmp_path, "true", hooks([daemon(hook_pid)]))
    skill = project.root / "agents" / "hello" / "SKILL.md"
    skill.write_text(f"---\nname: hello\n---\nContext: !`{daemon(context_pid)} echo ok`\n")
    project = load_project(project.root)
    run = (await RunExecutor(project, store).execute(await claim(store, project))).run
    assert run.state is RunState.SUCCEEDED
    assert not alive(pid_in(hook_pid))
    assert not alive(pid_in(context_pid))


async def test_a_setsid_child_of_the_agent_dies_on_a_normal_exit(
    tmp_path: Path, store: Store
) -> None:
    pidfile = tmp_path / "agent.pid"
    project = make_project(tmp_path, f"{daemon(pidfile)} exit 0")
    run = (await RunExecutor(project, store).execute(await claim(store, project))).run
    assert run.state is RunState.SUCCEEDED
    assert not alive(pid_in(pidfile))


async def test_a_same_group_background_child_dies_on_a_normal_exit(
    tmp_path: Path, store: Store
) -> None:
    pidfile = tmp_path / "bg.pid"
    project = make_project(tmp_path, f"sleep 300 > /dev/null 2>&1 & echo $! > {pidfile}; exit 3")
    run = (await RunExecutor(project, store).execute(await claim(store, project))).run
    assert (run.state, run.exit_code) == (RunState.FAILED, 3)
    assert not alive(pid_in(pidfile))


async def test_a_child_holding_the_output_does_not_turn_success_into_a_timeout(
    tmp_path: Path, store: Store
) -> None:
    pidfile = tmp_path / "holder.pid"
    project = make_project(tmp_path, f"sleep 300 & echo $! > {pidfile}; echo done", timeout=20)
    out = Collect()
    loop = asyncio.get_running_loop()
    began = loop.time()
    run = (await RunExecutor(project, store).execute(await claim(store, project), out)).run
    assert (run.state, run.exit_code, run.error) == (RunState.SUCCEEDED, 0, None)
    assert loop.time() - began < 10  # the main process's exit ends the run, not the pipe
    assert b"done" in out.data
    assert not alive(pid_in(pidfile))


async def test_a_timeout_kills_a_setsid_child_that_ignores_term(
    tmp_path: Path, store: Store
) -> None:
    pidfile = tmp_path / "agent.pid"
    project = make_project(tmp_path, f"{daemon(pidfile, trap_term=True)} sleep 300", timeout=1)
    executor = RunExecutor(project, store, grace=0.5)
    run = (await executor.execute(await claim(store, project))).run
    assert run.state is RunState.TIMED_OUT
    assert not alive(pid_in(pidfile))


async def test_a_kill_reaches_a_setsid_child(tmp_path: Path, store: Store) -> None:
    pidfile = tmp_path / "agent.pid"
    project = make_project(tmp_path, f"{daemon(pidfile, trap_term=True)} sleep 300")
    executor = RunExecutor(project, store, grace=0.5)
    claimed = await claim(store, project)
    task = asyncio.create_task(executor.execute(claimed))
    await wait_file(pidfile)
    assert await executor.stop(claimed.run.id, "killed by an operator")
    run = (await asyncio.wait_for(task, 15)).run
    assert run.state is RunState.KILLED
    assert not alive(pid_in(pidfile))


async def test_orphan_clean_up_kills_every_process_of_a_lost_run(
    tmp_path: Path, store: Store
) -> None:
    pidfile = tmp_path / "orphan.pid"
    project = make_project(tmp_path, "true")
    claimed = await claim(store, project)
    run_id = claimed.run.id
    # What a scheduler killed with -9 leaves: the run's main process and a setsid child.
    env = {"PATH": "/usr/bin:/bin", "CORRAL_RUN_ID": run_id}
    script = f"{daemon(pidfile)} exec sleep 300"
    process = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", script], cwd=tmp_path, env=env)
    )
    await store.mark_run_running(run_id, pid=process.pid, host=socket.gethostname())
    await wait_file(pidfile)
    recovered = await store.release_owner("test-owner", reason="its scheduler died")
    assert reap_orphans(recovered) == [run_id]
    assert not alive(pid_in(pidfile))
    await asyncio.wait_for(process.pump(Collect()), 10)
    assert not alive(process.pid)
