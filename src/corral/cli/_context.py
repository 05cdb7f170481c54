"""What every command shares: where the project is, and how to open its parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from corral.locate import resolve_project_root
from corral.project import Project, load_project
from corral.store import Store, open_store

__all__ = ["CliContext"]


@dataclass
class CliContext:
    project_dir: Path | None
    env: str | None

    def project(self) -> Project:
        return load_project(resolve_project_root(self.project_dir), env=self.env)

    async def store(self, project: Project, *, migrate: bool = True) -> Store:
        return await open_store(project.state_url, migrate=migrate)
