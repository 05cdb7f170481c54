"""The `host` runtime: a plain process in its own process group and run directory."""

from __future__ import annotations

import asyncio

from corral.errors import RunError
from corral.runtime._base import LaunchSpec, Process

__all__ = ["HostRuntime"]


class HostRuntime:
    """Starts the run as a child process on this machine.

    The child leads a new session (so a timeout or kill reaches every process
    it started), works in its own directory, and sees only ``spec.env``.
    """

    name = "host"

    async def launch(self, spec: LaunchSpec) -> Process:
        spec.cwd.mkdir(parents=True, exist_ok=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                cwd=spec.cwd,
                env=dict(spec.env),
                stdin=asyncio.subprocess.PIPE
                if spec.stdin is not None
                else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise RunError(f"could not start {spec.argv[0]!r}: {exc.strerror or exc}") from exc
        if spec.stdin is not None and proc.stdin is not None:
            await _feed(proc.stdin, spec.stdin)
        return Process(proc)


async def _feed(stream: asyncio.StreamWriter, data: bytes) -> None:
    """Write the prompt to the child's stdin and close it; a child that ignores stdin is fine."""
    try:
        stream.write(data)
        await stream.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stream.close()
