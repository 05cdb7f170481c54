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

__all__ = ["Bind", "Isolation", "LaunchSpec", "Process", "Runtime", "Sink"]

#: Receives each chunk of the run's combined stdout and stderr, in order.
Sink = Callable[[bytes], Awaitable[None]]

_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Bind:
    """A host path made visible inside a sandbox."""

    source: Path  # on the host; must exist
    target: Path  # inside the sandbox
    writable: bool = False


@dataclass(frozen=True)
class Isolation:
    """How a sandboxed run is cut off from the machine (see docs/sandbox.md).

    The root filesystem is read-only, ``/dev`` and ``/proc`` are the sandbox's
    own, ``/tmp`` is a private empty tmpfs; then each of ``hide`` is covered
    (an empty tmpfs over a directory, an unreadable node over a file), then
    ``binds`` are applied in order. ``network = False`` leaves only a loopback
    interface of the sandbox's own. ``memory_bytes`` and ``cpus`` are limits for
    the whole run. The host runtime ignores all of it.
    """

    binds: tuple[Bind, ...] = ()
    hide: tuple[Path, ...] = ()
    network: bool = True
    memory_bytes: int | None = None
    cpus: float | None = None


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a runtime needs to start one run's process.

    ``env`` is the whole environment: nothing from the scheduler's own
    environment leaks into the run unless it is listed here. ``cwd`` is the
    working directory as the run sees it: a host path for the host runtime
    (created if missing), a path inside the sandbox for the sandbox runtime.
    """

    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes | None = None
    isolation: Isolation | None = None


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
