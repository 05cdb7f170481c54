"""Hooks and dynamic context: shell commands run in the run's own runtime around the agent.

- ``hooks.pre`` run in order after the credentials are in place and before the agent
  starts; each has 5 minutes; the first that fails aborts the run (its output is in the
  run log).
- Dynamic context: each `` !`cmd` `` in SKILL.md's body runs after the pre hooks (60 s
  each, output capped) and is replaced by its output; a failure becomes
  ``[Error: <message>]`` inline.
- ``hooks.warm`` prepare a warm workspace before work arrives (corral.scheduler.warm),
  or run first in a cold run of an agent that has them (a failure is logged, the run goes
  on); ``hooks.refresh`` run first in a warm workspace a run took (a failure fails the
  run, as a pre hook's does).
- ``hooks.post`` run in order after the agent ends, whatever its outcome; a failure is
  logged and changes nothing.

Every command runs through ``/bin/sh -c`` with the run's environment, working directory
and isolation, via a ``ShellRunner`` the executor provides.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from corral.runtime import Sink

__all__ = [
    "CONTEXT_OUTPUT_LIMIT",
    "CONTEXT_TIMEOUT",
    "HOOK_TIMEOUT",
    "HookFailure",
    "ShellResult",
    "ShellRunner",
    "inject_context",
    "run_hooks",
]

HOOK_TIMEOUT = 300.0
CONTEXT_TIMEOUT = 60.0
#: The most one `` !`cmd` `` puts into the system prompt.
CONTEXT_OUTPUT_LIMIT = 64 * 1024

_MARKER = re.compile(r"!`([^`\n]+)`")


@dataclass(frozen=True)
class ShellResult:
    exit_code: int
    timed_out: bool = False


#: Run ``command`` with ``/bin/sh -c`` in the run's runtime, its output to ``sink``,
#: stopped after ``timeout`` seconds.
ShellRunner = Callable[[str, Sink, float], Awaitable[ShellResult]]


@dataclass(frozen=True)
class HookFailure:
    """A pre hook that failed: which one, and how."""

    kind: str
    index: int
    command: str
    result: ShellResult
    timeout: float = HOOK_TIMEOUT

    def __str__(self) -> str:
        how = (
            f"timed out after {self.timeout:g} s"
            if self.result.timed_out
            else f"exited with code {self.result.exit_code}"
        )
        return (
            f"{self.kind} hook {self.index} (`{self.command}`) {how}; its output is in the run log"
        )


async def run_hooks(
    kind: str,
    commands: Sequence[str],
    shell: ShellRunner,
    log: Sink,
    *,
    timeout: float = HOOK_TIMEOUT,
    stop_at_failure: bool = True,
) -> HookFailure | None:
    """Run ``commands`` in order, their output to ``log`` between marker lines; return
    the first failure (after which nothing more runs when ``stop_at_failure``)."""
    first: HookFailure | None = None
    for index, command in enumerate(commands, start=1):
        await log(f"[corral] {kind} hook {index}: {command}\n".encode())
        result = await shell(command, log, timeout)
        if result.exit_code == 0 and not result.timed_out:
            continue
        failure = HookFailure(kind, index, command, result, timeout)
        await log(f"[corral] {failure}\n".encode())
        first = first or failure
        if stop_at_failure:
            break
    return first


async def inject_context(
    body: str,
    shell: ShellRunner,
    *,
    timeout: float = CONTEXT_TIMEOUT,
    limit: int = CONTEXT_OUTPUT_LIMIT,
) -> str:
    """``body`` with each `` !`cmd` `` replaced by the command's output, in order."""
    pieces: list[str] = []
    end = 0
    for match in _MARKER.finditer(body):
        pieces.append(body[end : match.start()])
        pieces.append(await _one(match.group(1), shell, timeout, limit))
        end = match.end()
    pieces.append(body[end:])
    return "".join(pieces)


async def _one(command: str, shell: ShellRunner, timeout: float, limit: int) -> str:
    captured = bytearray()
    dropped = 0

    async def collect(chunk: bytes) -> None:
        nonlocal dropped
        room = limit - len(captured)
        captured.extend(chunk[: max(room, 0)])
        dropped += max(len(chunk) - max(room, 0), 0)

    result = await shell(command, collect, timeout)
    text = captured.decode("utf-8", "replace").rstrip("\n")
    if dropped:
        text += f"\n[output cut at {limit} bytes; {dropped} more bytes dropped]"
    if result.timed_out:
        return f"[Error: `{command}` timed out after {timeout:g} s]"
    if result.exit_code != 0:
        detail = text.strip() or f"`{command}` exited with code {result.exit_code}"
        return f"[Error: {detail}]"
    return text
