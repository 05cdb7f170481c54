"""Starting run processes leaves the event loop free: the fork/exec (and the checks
before it) run in worker threads, and a start that is cancelled leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from corral.runtime import HostRuntime, LaunchSpec
from corral.runtime._children import can_spawn_off_loop
from corral.runtime._contain import MARKER, marked_pids
from corral.runtime.host import start_process

STARTS = 48


async def _max_loop_gap(work: Callable[[], Awaitable[object]]) -> float:
    """The longest the loop went without running a 1 ms ticker while ``work`` ran."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = loop.time()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    try:
        await work()
    finally:
        done.set()
        await tick
    return max(gaps)


async def _starts(tmp_path: Path, on_loop: bool) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    if on_loop:  # what corral did before: asyncio forks and execs on the loop itself
        procs = await asyncio.gather(
            *(
                asyncio.create_subprocess_exec(
                    "/bin/true", cwd=tmp_path, env=env, start_new_session=True
                )
                for _ in range(STARTS)
            )
        )
    else:
        procs = await asyncio.gather(
            *(
                start_process(["/bin/true"], cwd=tmp_path, env=env, stdin=None)
                for _ in range(STARTS)
            )
        )
    assert [await p.wait() for p in procs] == [0] * STARTS


async def test_a_burst_of_starts_does_not_hold_the_loop(tmp_path: Path) -> None:
    assert can_spawn_off_loop()
    # Interleaved, best of three each: the machine is shared and noisy.
    on_loop, off_loop = [], []
    for _ in range(3):
        on_loop.append(await _max_loop_gap(lambda: _starts(tmp_path, on_loop=True)))
        off_loop.append(await _max_loop_gap(lambda: _starts(tmp_path, on_loop=False)))
    assert min(off_loop) < min(on_loop) / 2, (on_loop, off_loop)


async def test_a_cancelled_start_leaves_no_process(tmp_path: Path) -> None:
    runtime = HostRuntime()
    marker = f"spawn-{uuid.uuid4().hex[:12]}"
    spec = LaunchSpec(
        argv=["/bin/sh", "-c", "sleep 60 & exec sleep 60"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", MARKER: marker},
    )
    for delay in (0.0, 0.0005, 0.001, 0.002, 0.005):
        task = asyncio.create_task(runtime.launch(spec))
        await asyncio.sleep(delay)
        if task.done():  # started before the cancel: an ordinary run, ended as one
            process = task.result()
            await process.stop(0.1)
            continue
        task.cancel()
        try:
            process = await task
        except asyncio.CancelledError:
            continue
        await process.stop(0.1)
    # A cancelled start's thread may still be starting its child after the loop above
    # (queued behind the others): its child appears late and is then ended. So wait for
    # a whole second without any, not for the first moment without one.
    deadline = time.monotonic() + 15
    clear_since = None
    while time.monotonic() < deadline:
        if marked_pids(marker):
            clear_since = None
        elif clear_since is None:
            clear_since = time.monotonic()
        elif time.monotonic() - clear_since >= 1.0:
            break
        await asyncio.sleep(0.02)
    assert marked_pids(marker) == [], "a cancelled start left a process running"


async def test_a_start_cancelled_while_handed_to_asyncio_ends_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the started child's pipes are being connected (a busy loop), the
    start ends the child's whole group: what the child started holds its output pipe
    and must not keep the cancel waiting (it waited 60 s for `sleep 60` here)."""
    loop = asyncio.get_running_loop()
    connecting, cancelled = asyncio.Event(), asyncio.Event()
    connect = loop.connect_read_pipe

    async def slow_connect(*args: Any, **kwargs: Any) -> Any:
        connecting.set()
        await cancelled.wait()
        return await connect(*args, **kwargs)

    monkeypatch.setattr(loop, "connect_read_pipe", slow_connect)
    marker = f"spawn-{uuid.uuid4().hex[:12]}"
    spec = LaunchSpec(
        argv=["/bin/sh", "-c", "sleep 60 & exec sleep 60"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", MARKER: marker},
    )
    task = asyncio.create_task(HostRuntime().launch(spec))
    await asyncio.wait_for(connecting.wait(), 10)
    deadline = time.monotonic() + 10
    while len(marked_pids(marker)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the child's own child is up and holds the pipe too
    assert len(marked_pids(marker)) == 2
    task.cancel()
    await asyncio.sleep(0)  # the cancel reaches the start, then the pipe is connected
    cancelled.set()
    try:
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "the cancelled start waited for the child's group to exit by itself"
        assert task.cancelled()
        deadline = time.monotonic() + 5
        while marked_pids(marker) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert marked_pids(marker) == [], "a cancelled start left a process running"
    finally:
        for pid in marked_pids(marker):  # on failure: nothing left behind for 60 s
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


async def test_a_launch_writes_its_files_and_directory_in_the_start_thread(
    tmp_path: Path,
) -> None:
    """``LaunchSpec.before`` (the prompt files) and the working directory are made where
    the process is started: a worker thread, not the loop; before the program runs."""
    seen: list[int] = []
    workdir = tmp_path / "fresh" / "work"

    def before() -> None:
        seen.append(threading.get_ident())
        assert workdir.is_dir()  # the directory first, then the files in it
        (workdir / "prompt.md").write_text("hello\n")

    spec = LaunchSpec(
        argv=["/bin/cat", "prompt.md"],
        cwd=workdir,
        env={"PATH": "/usr/bin:/bin", MARKER: f"t-{uuid.uuid4().hex[:8]}"},
        before=before,
    )
    process = await HostRuntime().launch(spec)
    out = bytearray()

    async def sink(chunk: bytes) -> None:
        out.extend(chunk)

    assert await process.pump(sink) == 0
    assert bytes(out) == b"hello\n"
    assert len(seen) == 1
    if can_spawn_off_loop():
        assert seen[0] != threading.get_ident()
