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

A change is loaded only once the files have stayed the same for two polls in a row, so a
save caught half-way is not loaded. A ``config.toml`` that the last good configuration had
and that is now missing (or not a regular file) is a bad edit, not "no settings": a file
briefly absent during ``rm`` + ``cp`` must not drop an agent's sandbox or the project's
limits. Removing an agent's whole folder removes the agent. Files are read without
blocking (a FIFO) and never more than the loader's size cap, so no edit can hang or exhaust
the scheduler; any error while checking keeps the last good configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError, ConfigIssue, CorralError
from corral.inert import inert
from corral.locate import corral_home
from corral.project import Project, file_digest, load_project

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
    return {str(path): file_digest(path) for path in paths}


def vanished_configs(good: Fingerprint, current: Fingerprint) -> list[str]:
    """The ``config.toml`` files the last good configuration read that are now missing or
    not regular files, in folders that are still there (a removed agent folder has no
    entries in ``current``)."""
    return [
        path
        for path, digest in current.items()
        if path.endswith("config.toml")
        and digest in ("missing", "not-regular")
        and good.get(path, "missing").startswith("sha256:")
    ]


def weakened(old: Project, new: Project) -> list[str]:
    """Agents whose isolation ``new`` weakens: sandbox -> host, or network none -> host."""
    found = []
    for name in sorted(set(old.agents) & set(new.agents)):
        before, after = old.agents[name].config.runtime, new.agents[name].config.runtime
        if before.type == "sandbox" and after.type != "sandbox":
            found.append(f"{name} (runtime sandbox -> {after.type})")
        elif before.type == "sandbox" and before.network == "none" and after.network != "none":
            found.append(f"{name} (network none -> {after.network})")
    return found


def keep_running_values(old: Project, new: Project) -> Project:
    """``new`` with the store URL and ``[gateway]`` of ``old``: those are in use until the
    next `corral start`, and everything that reads them must see the ones in use."""
    config = new.config.model_copy(update={"gateway": old.config.gateway})
    return dataclasses.replace(new, state_url=old.state_url, config=config)


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
        #: The files of the last configuration that loaded (to tell a vanished config.toml).
        self._good = self._seen
        #: A change seen at the last poll, loaded if it is still the same at this one.
        self._pending: Fingerprint | None = None
        #: The loader's report on the last change that did not load, until one does.
        self.error: str | None = None
        #: True while the project comes from pushed bundles (scheduler/bundles.py): the
        #: directory's files are then not reloaded.
        self.suspended = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> bool:
        """Reload if a file changed and then stayed the same for a poll; True when a new
        configuration was applied."""
        if self.suspended:
            return False
        try:
            current = await asyncio.to_thread(fingerprint, self.root, self.env)
        except Exception as exc:  # e.g. the agents folder unreadable: try again next poll
            log.error("cannot check the project's files: %s", inert(str(exc)))
            return False
        if current == self._seen:
            self._pending = None
            return False
        if current != self._pending:  # still changing (or just changed): look again later
            self._pending = current
            return False
        self._pending = None
        project = await self._load(current)
        if project is None:
            return False
        await self._apply(project)  # a store error propagates: the change is tried again
        self._seen = self._good = current
        self.error = None
        return True

    async def _load(self, current: Fingerprint) -> Project | None:
        """The new configuration, or None (reported once) when it is a bad edit."""
        vanished = vanished_configs(self._good, current)
        try:
            if vanished:
                shown = [str(Path(path).relative_to(self.root)) for path in vanished]
                raise ConfigError([ConfigIssue(name, None, _VANISHED) for name in shown])
            return await asyncio.to_thread(load_project, self.root, self.env)
        except Exception as exc:  # any failure keeps the last good configuration running
            self._seen = current  # reported once; the next edit is tried again
            self.error = _describe(exc)
            log.error(
                "the configuration changed but does not load; the last good configuration "
                "keeps running. %s",
                self.error,
                extra={"action": "reload_failed"},
            )
            return None


_VANISHED = (
    "this config.toml was in the running configuration and is now missing or not a regular "
    "file (a save in progress?); the last good configuration keeps running. Put the file "
    "back (an empty config.toml means no settings), or remove the agent's whole folder"
)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ConfigError):
        return exc.render()
    if isinstance(exc, CorralError):
        return str(exc)
    return inert(f"{type(exc).__name__}: {exc}")
