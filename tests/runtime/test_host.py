"""The host runtime: a real child process in its own group, directory and environment."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from corral.errors import RunError
from corral.runtime import HostRuntime, LaunchSpec
from tests.processes import alive


class Collect:
    def __init__(self) -> None:
        self.data = b""

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk


async def run(spec: LaunchSpec) -> tuple[int, bytes]:
    out = Collect()
    process = await HostRuntime().launch(spec)
    code = await process.pump(out)
    return code, out.data


async def test_child_sees_only_the_given_environment_and_directory(tmp_path: Path) -> None:
    os.environ["CORRAL_TEST_LEAK"] = "secret"
    try:
        spec = LaunchSpec(
            argv=["/bin/sh", "-c", "pwd; env | sort"],
            cwd=tmp_path / "run",
            env={"PATH": "/usr/bin:/bin", "ONLY": "this"},
        )
        code, out = await run(spec)
    finally:
        del os.environ["CORRAL_TEST_LEAK"]
    text = out.decode()
    assert code == 0
    assert text.splitlines()[0] == str(tmp_path / "run")
    assert "ONLY=this" in text
    assert "CORRAL_TEST_LEAK" not in text


async def test_stdin_is_fed_and_stderr_is_merged(tmp_path: Path) -> None:
    spec = LaunchSpec(
        argv=["/bin/sh", "-c", "cat; echo oops >&2; exit 3"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        stdin=b"the prompt\n",
    )
    code, out = await run(spec)
    assert code == 3
    assert out == b"the prompt\noops\n"


async def test_large_stdin_to_a_child_that_ignores_it(tmp_path: Path) -> None:
    spec = LaunchSpec(argv=["/bin/true"], cwd=tmp_path, env={}, stdin=b"x" * 4_000_000)
    code, _ = await run(spec)
    assert code == 0


async def test_stop_reaches_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The grandchild ignores nothing in particular; it must die with the group.
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    process = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", script], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    )
    pump = asyncio.create_task(process.pump(Collect()))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.02)
    grandchild = int(pidfile.read_text())
    await process.stop(grace=2.0)
    code = await asyncio.wait_for(pump, 5)
    assert code < 0  # ended by a signal
    assert not alive(grandchild)


async def test_stop_escalates_to_sigkill_when_term_is_ignored(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' TERM; touch {ready}; while :; do sleep 0.05; done"
    process = await HostRuntime().launch(
        LaunchSpec(argv=["/bin/sh", "-c", script], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    )
    pump = asyncio.create_task(process.pump(Collect()))
    for _ in range(100):
        if ready.exists():
            break
        await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await process.stop(grace=0.3)
    code = await asyncio.wait_for(pump, 5)
    assert code == -9
    assert loop.time() - began >= 0.3


async def test_missing_program_is_a_run_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="could not start '/no/such/agent'"):
        await HostRuntime().launch(LaunchSpec(argv=["/no/such/agent"], cwd=tmp_path, env={}))
