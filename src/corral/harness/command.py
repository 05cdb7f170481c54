"""The `command` harness: an external program runs as the agent.

The program gets the assembled prompt on stdin and in ``$CORRAL_PROMPT_FILE``,
and SKILL.md's body (the system prompt) in ``$CORRAL_SYSTEM_PROMPT_FILE``.
A string command runs through ``/bin/sh -c``; a list is the argv itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from corral.errors import RunError
from corral.locate import write_private_in
from corral.runtime import LaunchSpec

__all__ = ["RunFiles", "base_environment", "build_launch"]

# Variables a run inherits from the process that starts it; everything else is
# left behind so the scheduler's own secrets never reach an agent.
_INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ")


@dataclass(frozen=True)
class RunFiles:
    """Where one run's files live on the host."""

    workdir: Path
    prompt: Path
    system_prompt: Path

    @classmethod
    def under(cls, workdir: Path) -> RunFiles:
        meta = workdir / ".corral"
        return cls(workdir, meta / "prompt.md", meta / "system-prompt.md")

    @property
    def meta(self) -> Path:
        """The run's own corral directory (prompt files, setenv file, credential links)."""
        return self.prompt.parent

    @property
    def env_file(self) -> Path:
        """Where ``setenv`` keeps variables for the rest of the run (sourced by bash)."""
        return self.prompt.parent / "env.sh"

    def write(self, prompt: str, system_prompt: str, owner: tuple[int, int] | None = None) -> None:
        """Write both prompt files, 0600 from the start (``owner``'s, when given).

        The run's hooks have run in this directory before: a name it turned into a link
        is replaced, never written through (`write_private_in`).
        """
        self.prompt.parent.mkdir(parents=True, exist_ok=True)
        for path, text in ((self.prompt, prompt), (self.system_prompt, system_prompt)):
            write_private_in(path.parent, path.name, text, owner)


def base_environment(inherit: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if inherit is None else inherit
    env = {name: source[name] for name in _INHERITED if name in source}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def build_launch(
    command: str | tuple[str, ...] | None,
    files: RunFiles,
    env: Mapping[str, str],
    prompt: str,
) -> LaunchSpec:
    if command is None or command == () or command == "":
        raise RunError("the agent has no [harness] command to run")
    argv: list[str] = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    full_env = {
        **env,
        "CORRAL_PROMPT_FILE": str(files.prompt),
        "CORRAL_SYSTEM_PROMPT_FILE": str(files.system_prompt),
    }
    return LaunchSpec(argv=argv, cwd=files.workdir, env=full_env, stdin=prompt.encode())
