"""The self-fencing watchdog process: it kills a run's processes when the scheduler's
renewal deadline passes, or when the scheduler is gone. Real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import pytest

from corral.runtime import HostRuntime, LaunchSpec, Process
from corral.scheduler.watchdog import Watchdog, boottime, fence_deadline, fence_margin
from tests.processes import alive


class Discard:
    async def __call__(self, chunk: bytes) -> None:
        pass


async def start_run(tmp_path: Path) -> tuple[str, Process, Path]:
    """A run's process (its own marker) with a `setsid` child; the child's pid file."""
    run_id = f"wd-{uuid.uuid4().hex[:12]}"
    pidfile = tmp_path / f"{run_id}.pid"
    script = (
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' > /dev/null 2>&1 < /dev/null & "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done; exec sleep 300"
    )
    env = {"PATH": "/usr/bin:/bin", "CORRAL_RUN_ID": run_id}
    process = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", script], cwd=tmp_path, env=env)
    )
    while not (pidfile.exists() and pidfile.read_text().strip()):
        await asyncio.sleep(0.02)
    return run_id, process, pidfile


async def dead(process: Process, pidfile: Path, timeout: float) -> bool:
    """True once both the run's main process and its setsid child are gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    child = int(pidfile.read_text())
    while loop.time() < deadline:
        if not alive(child) and (process.returncode is not None or not alive(process.pid)):
            return True
        await asyncio.sleep(0.05)
    return False


def test_margins() -> None:
    assert fence_margin(30) == 3.0  # the default lease: stopped 3 s before it can lapse
    assert fence_margin(4) == 1.0  # never less than a second
    assert fence_margin(1) == 0.5  # and never more than half a short lease
    assert fence_deadline(100.0, 30) == 127.0


async def test_a_missed_deadline_kills_the_tracked_runs_only(tmp_path: Path) -> None:
    watchdog = Watchdog()
    watchdog.start()
    tracked, untracked = await start_run(tmp_path), await start_run(tmp_path)
    try:
        watchdog.track(tracked[0])
        watchdog.set_deadline(boottime() + 0.5)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await dead(tracked[1], tracked[2], 5)
        assert loop.time() - began < 3
        assert alive(untracked[1].pid) and alive(int(untracked[2].read_text()))
    finally:
        watchdog.close()
        for _, process, _ in (tracked, untracked):
            await process.stop(0.1)


async def test_deadlines_fed_in_time_keep_the_runs_going(tmp_path: Path) -> None:
    watchdog = Watchdog()
    watchdog.start()
    run_id, process, pidfile = await start_run(tmp_path)
    try:
        watchdog.track(run_id)
        for _ in range(15):  # 1.5 s of renewals, each good for 0.5 s
            watchdog.set_deadline(boottime() + 0.5)
            await asyncio.sleep(0.1)
        assert alive(process.pid) and alive(int(pidfile.read_text()))
        watchdog.untrack(run_id)  # a run that ended is not the watchdog's any more
        await asyncio.sleep(1.0)
        assert alive(process.pid)
    finally:
        watchdog.close()
        await process.stop(0.1)


@pytest.mark.parametrize("how", ["closed", "killed"])
async def test_when_the_scheduler_is_gone_its_runs_are_killed(tmp_path: Path, how: str) -> None:
    watchdog = Watchdog()
    watchdog.start()
    run_id, process, pidfile = await start_run(tmp_path)
    try:
        watchdog.track(run_id)
        watchdog.set_deadline(boottime() + 600)
        if how == "closed":
            watchdog.close()  # the scheduler's end of the pipe closes
        else:
            # A watchdog that dies is noticed and started again, and told everything.
            assert watchdog.pid is not None
            os.kill(watchdog.pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            watchdog.ensure()
            assert watchdog.alive()
            watchdog.close()
        assert await dead(process, pidfile, 5)
    finally:
        watchdog.close()
        await process.stop(0.1)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_passed_deadline_with_nothing_to_kill_does_not_spin() -> None:
    # During a long store outage the deadline stays in the past: the watchdog must wait
    # for news, not loop on a zero timeout.
    watchdog = Watchdog()
    watchdog.start()
    try:
        assert watchdog.pid is not None
        watchdog.set_deadline(boottime() - 1.0)
        await asyncio.sleep(0.3)
        before = _cpu_seconds(watchdog.pid)
        await asyncio.sleep(1.5)
        assert _cpu_seconds(watchdog.pid) - before < 0.3
    finally:
        watchdog.close()


def _writes() -> int:
    """Write calls made by this process so far (the kernel's count)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/self/io")


async def test_runs_started_in_one_turn_reach_the_watchdog_in_one_write(
    tmp_path: Path,
) -> None:
    """A claim of 64 runs tracks 64 runs in one turn of the loop: one write to the
    watchdog, not 64; and the watchdog knows each of them (a passed deadline kills the
    one that has a process)."""
    watchdog = Watchdog()
    watchdog.start()
    run_id, process, pidfile = await start_run(tmp_path)
    try:
        await asyncio.sleep(0.2)
        before = _writes()
        for n in range(63):
            watchdog.track(f"wd-other-{n}")
        watchdog.track(run_id)
        await asyncio.sleep(0)  # the end of this turn
        await asyncio.sleep(0)
        assert _writes() - before <= 3
        watchdog.set_deadline(boottime() + 0.3)
        assert await dead(process, pidfile, 5)
    finally:
        watchdog.close()
        await process.stop(0.1)


async def test_a_run_tracked_just_before_the_close_is_killed_with_the_rest(
    tmp_path: Path,
) -> None:
    """Closed in the same turn as a run was tracked: the run reaches the watchdog before
    its end of the pipe closes, and is killed as the scheduler's runs are."""
    watchdog = Watchdog()
    watchdog.start()
    run_id, process, pidfile = await start_run(tmp_path)
    try:
        watchdog.track(run_id)
        watchdog.close()
        assert await dead(process, pidfile, 5)
    finally:
        await process.stop(0.1)
