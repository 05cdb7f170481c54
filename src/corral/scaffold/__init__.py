"""`corral new`: lay out a working project from the packaged template."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from corral.errors import UsageError

__all__ = ["create_project"]

# Files stored under another name in the package (a dotfile is easy to lose in packaging).
_RENAMES = {"gitignore": ".gitignore"}


def create_project(dest: Path) -> list[Path]:
    """Copy the template into ``dest`` and return the files written.

    ``dest`` must not exist or be an empty directory: nothing a user already
    has is overwritten.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(
            f"{dest} already exists and is not empty; choose a new directory name "
            "(corral new never overwrites files)"
        )
    template = resources.files("corral.scaffold") / "template"
    written: list[Path] = []
    with resources.as_file(template) as root:
        for source in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = source.relative_to(root)
            target = dest / rel.parent / _RENAMES.get(rel.name, rel.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            if source.suffix == ".sh":
                target.chmod(0o755)
            written.append(target)
    return written
