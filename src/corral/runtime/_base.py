"""What every runtime shares: the launch request and the handle on a started process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["LaunchSpec", "Process", "Runtime", "Sink"]

#: Receives each chunk of the run's combined stdout and stderr, in order.
Sink = Callable[[bytes], Awaitable[None]]

_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a runtime needs to start one run's process.

    ``env`` is the whole environment: nothing from the scheduler's own
    environment leaks into the run unless it is listed here.
    """

    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes | None = None


class Runtime(Protocol):
    name: str

    async def launch(self, spec: LaunchSpec) -> Process: ...


class Process:
    """A started run process, leader of its own process group."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid

    async def pump(self, sink: Sink) -> int:
        """Feed all output to ``sink`` until the process closes it, then reap it."""
        stdout = self._proc.stdout
        if stdout is not None:
            while chunk := await stdout.read(_READ_CHUNK):
                await sink(chunk)
        return await self._proc.wait()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the whole process group (the run and its children)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    async def stop(self, grace: float) -> None:
        """SIGTERM the group, then SIGKILL it if it is still there after ``grace`` seconds."""
        self.signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout=grace)
        except TimeoutError:
            pass
        # Children may outlive the leader; the group is killed either way.
        self.signal_group(signal.SIGKILL)
