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

from corral.runtime._contain import Containment
from corral.runtime._private import StaticView

__all__ = ["Bind", "DataFile", "Isolation", "LaunchSpec", "Process", "Runtime", "Sink"]

#: Receives each chunk of the run's combined stdout and stderr, in order.
Sink = Callable[[bytes], Awaitable[None]]

_READ_CHUNK = 64 * 1024
#: How long what a process started may go on after it exited, before it is killed.
LINGER = 2.0
_POLL = 0.05
_REAP_POLL = 0.005
_DRAIN = 1.0


@dataclass(frozen=True)
class Bind:
    """A host path made visible inside a sandbox."""

    source: Path  # on the host; must exist
    target: Path  # inside the sandbox
    writable: bool = False


@dataclass(frozen=True)
class DataFile:
    """A file made inside a sandbox from ``content`` (nothing of the host is bound)."""

    target: Path  # inside the sandbox
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class Isolation:
    """How a sandboxed run is cut off from the machine (see docs/sandbox.md).

    The root filesystem is read-only, ``/dev`` and ``/proc`` are the sandbox's
    own, ``/tmp`` is a private empty tmpfs; then each of ``hide`` is covered
    (an empty tmpfs over a directory, an unreadable node over a file), then
    ``binds`` are applied in order (none may show a hidden path), then ``files``.
    ``network = False`` leaves only a loopback interface of the sandbox's own.
    ``memory_bytes`` and ``cpus`` are limits for the whole run. The host runtime ignores all of it.
    """

    binds: tuple[Bind, ...] = ()
    hide: tuple[Path, ...] = ()
    network: bool = True
    memory_bytes: int | None = None
    cpus: float | None = None
    #: The host uid and gid of the run's processes (corral must be root to give them);
    #: None: corral's own. State that is private to corral's user is then out of reach.
    uid: int | None = None
    gid: int | None = None
    #: Files whose content is copied into the sandbox, read-only (credentials).
    files: tuple[DataFile, ...] = ()


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
    #: The run's own scratch directory on the host: the host runtime binds it on /tmp
    #: where it can (docs/sandbox.md); the sandbox has a private /tmp of its own.
    tmp: Path | None = None
    #: What the run sees, read-only, at /app/static (see runtime._private.make_static).
    static: StaticView | None = None
    #: Host paths the run reaches through links (its credentials): a private /tmp must
    #: not hide them.
    reach: tuple[Path, ...] = ()
    #: Blocking file work to do just before the process starts (the prompt files),
    #: called where the start runs: the host runtime's start thread, off the loop.
    before: Callable[[], None] | None = field(default=None, compare=False, repr=False)


class Runtime(Protocol):
    name: str

    async def launch(self, spec: LaunchSpec) -> Process: ...


class Process:
    """A started run process, leader of its own process group, in its own containment.

    The process is done when it exits: what it started gets ``linger`` seconds to
    finish (and to close the output), then everything left in its containment is
    killed. Its exit status is the outcome, whatever the rest did.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        containment: Containment | None = None,
        *,
        linger: float = LINGER,
    ) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.containment = containment
        self.linger = linger

    async def pump(self, sink: Sink) -> int:
        """Feed all output to ``sink`` until the process exits and its descendants are
        gone (at most ``linger`` seconds later, when they are killed); its exit status."""
        reader = asyncio.create_task(self._read(sink), name=f"output of {self.pid}")
        exited = asyncio.create_task(self._exited(), name=f"exit of {self.pid}")
        try:
            await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]  # the sink failed
            returncode = await exited
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.linger
            while loop.time() < deadline and not (reader.done() and self._empty()):
                await asyncio.wait({reader}, timeout=min(_POLL, deadline - loop.time()))
            await self.kill_rest()
            # Everything that held the output is gone; what is still buffered is read.
            await asyncio.wait({reader}, timeout=_DRAIN)
        finally:
            for task in (exited, reader):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if reader.cancelled():
                self._close_output()
        if not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]
        return returncode

    async def _read(self, sink: Sink) -> None:
        stdout = self._proc.stdout
        if stdout is not None:
            while chunk := await stdout.read(_READ_CHUNK):
                await sink(chunk)

    async def _exited(self) -> int:
        """The exit status, as soon as the process exits (not when its output closes:
        asyncio's ``wait`` waits for both)."""
        proc = self._proc
        if proc.returncode is not None:
            return proc.returncode
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = -1
        try:
            if pidfd >= 0:
                loop = asyncio.get_running_loop()
                exited: asyncio.Future[None] = loop.create_future()

                def readable() -> None:
                    if not exited.done():
                        exited.set_result(None)

                loop.add_reader(pidfd, readable)
                try:
                    await exited
                finally:
                    loop.remove_reader(pidfd)
            while proc.returncode is None:  # the child watcher reaps it in a moment
                await asyncio.sleep(_REAP_POLL)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        return proc.returncode

    def _empty(self) -> bool:
        return self.containment is None or not self.containment.pids()

    def _close_output(self) -> None:
        """Stop waiting for an output pipe held by a process outside the containment."""
        transport = getattr(self._proc, "_transport", None)
        if transport is not None:
            transport.close()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the process group and to every process of the containment."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)
        if self.containment is not None:
            self.containment.signal_all(signum)

    async def kill_rest(self) -> None:
        """SIGKILL the group and everything left in the containment."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.containment is not None:
            await self.containment.kill()

    async def stop(self, grace: float) -> None:
        """SIGTERM the group and the containment, then SIGKILL all of it if anything is
        still there after ``grace`` seconds."""
        self.signal_group(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline and not (self.returncode is not None and self._empty()):
            await asyncio.sleep(min(_POLL, max(0.0, deadline - loop.time())))
        # Children may outlive the leader; all of it is killed either way.
        await self.kill_rest()
