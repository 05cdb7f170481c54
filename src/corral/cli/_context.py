"""What every command shares: where the project is, and how to open its parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from corral.cli._render import err_console
from corral.errors import ConfigError
from corral.inert import inert
from corral.locate import resolve_project_root
from corral.project import Project, load_minimal, load_project, validate_agent_name
from corral.store import Store, open_store

__all__ = ["CliContext", "is_agent_of"]


@dataclass
class CliContext:
    project_dir: Path | None
    env: str | None

    def project(self) -> Project:
        return load_project(resolve_project_root(self.project_dir), env=self.env)

    def project_for_store(self) -> Project:
        """The project for a command that needs only its root and its store: when an edit
        does not load, `corral stop`, `kill` and `logs` still work (with a warning), on the
        store URL the files still give (or the default)."""
        root = resolve_project_root(self.project_dir)
        try:
            return load_project(root, env=self.env)
        except ConfigError as exc:
            first = inert(exc.issues[0]) if exc.issues else "?"
            err_console.print(
                f"[yellow]warning:[/] the configuration does not load ({escape(first)}); "
                "going on with the project directory and its store only",
                soft_wrap=True,
            )
            return load_minimal(root, env=self.env)

    async def store(self, project: Project, *, migrate: bool = True) -> Store:
        return await open_store(project.state_url, migrate=migrate)


def is_agent_of(project: Project, name: str) -> bool:
    """``name`` is an agent of ``project``: a loaded one, or (when an edit of it does not
    load) a valid agent name with a folder under ``agents/``."""
    if name in project.agents:
        return True
    return validate_agent_name(name) is None and (project.root / "agents" / name).is_dir()
