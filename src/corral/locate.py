"""Finding the project a command is about."""

from __future__ import annotations

from pathlib import Path

from corral.errors import UsageError

__all__ = ["find_project_root", "resolve_project_root"]


def find_project_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` that looks like a corral project."""
    for candidate in (start, *start.parents):
        if (candidate / "agents").is_dir() or (candidate / "config.toml").is_file():
            return candidate
    return None


def resolve_project_root(explicit: Path | None) -> Path:
    """``explicit`` when given (it must exist), else the project around the current directory."""
    if explicit is not None:
        if not explicit.is_dir():
            raise UsageError(f"project directory {explicit} does not exist")
        return explicit.resolve()
    found = find_project_root(Path.cwd())
    if found is None:
        raise UsageError(
            f"no corral project here: {Path.cwd()} and its parents have no config.toml "
            "or agents/ directory. Run inside a project, pass --project DIR, "
            "or create one with `corral new DIR`."
        )
    return found
