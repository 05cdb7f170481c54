"""The `host` runtime: a plain process in its own process group and run directory."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from corral.errors import RunError
from corral.runtime._base import LaunchSpec, Process

__all__ = ["HostRuntime", "feed_stdin", "start_process"]


class HostRuntime:
    """Starts the run as a child process on this machine.

    The child leads a new session (so a timeout or kill reaches every process
    it started), works in its own directory, and sees only ``spec.env``.
    ``spec.isolation`` is ignored: a host run is not isolated.
    """

    name = "host"

    async def launch(self, spec: LaunchSpec) -> Process:
        spec.cwd.mkdir(parents=True, exist_ok=True)
        proc = await start_process(spec.argv, cwd=spec.cwd, env=spec.env, stdin=spec.stdin)
        await feed_stdin(proc, spec.stdin)
        return Process(proc)


async def start_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdin: bytes | None,
    pass_fds: Collection[int] = (),
) -> asyncio.subprocess.Process:
    """Start ``argv`` leading a new session, stdout and stderr merged.

    Shared by the runtimes (the sandbox runtime starts bubblewrap through it).
    With ``stdin`` the child's stdin is a pipe: give the bytes to `feed_stdin`.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except OSError as exc:
        raise RunError(f"could not start {argv[0]!r}: {exc.strerror or exc}") from exc
    return proc


async def feed_stdin(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    """Write the prompt to the child's stdin and close it; a child that ignores stdin is fine."""
    stream = proc.stdin
    if data is None or stream is None:
        return
    try:
        stream.write(data)
        await stream.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stream.close()
