"""Hot reload: a running scheduler picks up agents added, removed or edited, and changes to
the project's configuration, without a restart (docs/operating.md, "Changing a running
fleet").

The watcher polls: every ``interval`` seconds it reads the files the loader reads (the
project's ``config.toml`` and ``.env.toml``, the environment file, and each agent's
``SKILL.md`` and ``config.toml``) and compares their digests with the last ones it saw.
Polling needs no platform support (inotify is Linux-only and misses edits on network file
systems), costs a few small reads a second, and sees an edit within ``interval``; an
editor's save-by-rename is a change like any other. On a change the whole project is
loaded again by the normal loader. A project that does not load is reported (the loader's
error, naming file, field and line) and the last good configuration keeps running; the
next edit is tried again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError, CorralError
from corral.locate import corral_home
from corral.project import Project, load_project

__all__ = ["ProjectWatcher", "ReloadSummary", "fingerprint", "summarize"]

log = logging.getLogger("corral.reload")

#: The files of an agent's folder the loader reads.
_AGENT_FILES = ("SKILL.md", "config.toml")

Fingerprint = dict[str, str]


def fingerprint(root: Path, environment: str | None) -> Fingerprint:
    """A digest of every file the loader reads for the project at ``root`` (a missing file
    counts too: it is a change when it appears)."""
    paths = [root / "config.toml", root / ".env.toml"]
    if environment is not None:
        paths.append(corral_home() / "environments" / f"{environment}.toml")
    agents = root / "agents"
    try:
        folders = sorted(p for p in agents.iterdir() if not p.name.startswith("."))
    except OSError:
        folders = []
    for folder in folders:
        paths += [folder / name for name in _AGENT_FILES]
    return {str(path): _digest(path) for path in paths}


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "directory"
    except OSError as exc:  # unreadable: a change worth a reload, which reports it
        return f"error {exc.errno}"


@dataclass(frozen=True)
class ReloadSummary:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    project_changed: bool
    #: Settings that take effect only at the next `corral start`.
    restart_needed: tuple[str, ...]

    def describe(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        if self.project_changed:
            parts.append("project settings changed")
        return "; ".join(parts) or "no effective change"


def summarize(old: Project, new: Project) -> ReloadSummary:
    """What changed from ``old`` to ``new``."""
    restart = []
    if old.state_url != new.state_url:
        restart.append("the state store (state_url)")
    if old.config.gateway != new.config.gateway:
        restart.append("[gateway]")
    return ReloadSummary(
        added=tuple(sorted(set(new.agents) - set(old.agents))),
        removed=tuple(sorted(set(old.agents) - set(new.agents))),
        changed=tuple(
            sorted(n for n in set(old.agents) & set(new.agents) if old.agents[n] != new.agents[n])
        ),
        project_changed=old.config != new.config,
        restart_needed=tuple(restart),
    )


Apply = Callable[[Project], Awaitable[object]]


class ProjectWatcher:
    """Watches ``project``'s files and calls ``apply`` with each good new configuration."""

    def __init__(
        self,
        project: Project,
        apply: Apply,
        *,
        env: str | None = None,
        interval: float = 1.0,
    ) -> None:
        self.root = project.root
        #: The environment the project was loaded with (`-E`, $CORRAL_ENV, .env.toml).
        self.env = env if env is not None else project.environment
        self.interval = interval
        self._apply = apply
        self._seen = fingerprint(self.root, project.environment)
        #: The loader's report on the last change that did not load, until one does.
        self.error: str | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> bool:
        """Reload if a file changed; True when a new configuration was applied."""
        current = await asyncio.to_thread(fingerprint, self.root, self.env)
        if current == self._seen:
            return False
        try:
            project = await asyncio.to_thread(load_project, self.root, self.env)
        except CorralError as exc:  # ConfigError: every issue, with file, field and line
            self._seen = current  # reported once; the next edit is tried again
            self.error = exc.render() if isinstance(exc, ConfigError) else str(exc)
            log.error(
                "the configuration changed but does not load; the last good configuration "
                "keeps running. %s",
                self.error,
                extra={"action": "reload_failed"},
            )
            return False
        await self._apply(project)  # a store error propagates: the change is tried again
        self._seen = current
        self.error = None
        return True
