"""The SQL a dialect ships as package data: named queries, the fresh schema, migrations.

Layout, per dialect (``sqlite``, ``postgresql``) under ``corral/store/sql/<dialect>/``:

    queries.sql                 blocks starting with ``-- name: <query name>``
    schema.sql                  the fresh-install schema (every migration folded in)
    migrations/NNNN_<name>.sql  numbered migrations, applied in order from 0001
"""

from __future__ import annotations

import dataclasses
import functools
import re
from importlib import resources
from importlib.resources.abc import Traversable

from corral.errors import MigrationError

__all__ = ["Migration", "SqlFiles", "load_sql_files", "parse_named_queries"]

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One numbered migration script."""

    version: int
    name: str
    sql: str


@dataclasses.dataclass(frozen=True, slots=True)
class SqlFiles:
    """Everything one dialect's SQL directory holds, parsed."""

    dialect: str
    queries: dict[str, str]
    schema: str
    migrations: tuple[Migration, ...]

    @property
    def latest_version(self) -> int:
        return self.migrations[-1].version if self.migrations else 0


def parse_named_queries(text: str, *, source: str = "queries.sql") -> dict[str, str]:
    """Split ``-- name: x`` blocks into {name: sql}; text before the first block is ignored."""
    queries: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        name = match.group("name")
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        queries[name] = text[match.end() : end].strip()
    return queries


@functools.cache
def load_sql_files(dialect: str) -> SqlFiles:
    """Read and parse the SQL shipped for ``dialect`` (cached: files never change at runtime)."""
    root = resources.files("corral.store").joinpath("sql", dialect)
    return SqlFiles(
        dialect=dialect,
        queries=parse_named_queries(_read(root, "queries.sql"), source=f"{dialect}/queries.sql"),
        schema=_read(root, "schema.sql"),
        migrations=_load_migrations(root.joinpath("migrations"), dialect),
    )


def _read(root: Traversable, name: str) -> str:
    return root.joinpath(name).read_text(encoding="utf-8")


def _load_migrations(folder: Traversable, dialect: str) -> tuple[Migration, ...]:
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            version = int(match.group("version"))
            found.append(Migration(version, match.group("name"), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(
            f"{dialect} migrations must be numbered 0001, 0002, … without gaps; found {versions}"
        )
    return tuple(found)
