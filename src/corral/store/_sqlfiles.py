"""The SQL a dialect ships as package data: named queries, the fresh schema, migrations.

Layout, per dialect (``sqlite``, ``postgresql``) under ``corral/store/sql/<dialect>/``:

    queries.sql                 blocks starting with ``-- name: <query name>``
    schema.sql                  the fresh-install schema (every migration folded in)
    migrations/NNNN_<name>.sql  numbered migrations, applied in order from 0001

and, shared, ``corral/store/sql/common/queries.sql``: the queries both dialects run as
written, in one parameter style (``:name``, SQLite's own). A dialect's queries are the
common ones overlaid by its own ``queries.sql``: a name both define is the dialect's,
and an override that says exactly what the common query says once translated is an
error, so a duplicate cannot creep back. For PostgreSQL (psycopg's ``%(name)s``) the
common text is translated by ``to_pyformat``: each ``:name`` outside string literals,
quoted identifiers and comments becomes ``%(name)s``, ``::`` casts stay, and every
``%`` (literal, comment or operator) is doubled, since psycopg reads the whole text.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable

from corral.errors import MigrationError

__all__ = [
    "Migration",
    "SqlFiles",
    "load_sql_files",
    "overlay_queries",
    "parse_named_queries",
    "split_trailing_comments",
    "to_pyformat",
]

#: The dialects whose queries are written in the common style as they are.
_NATIVE = frozenset({"sqlite"})
#: The dialects whose queries are the common ones translated by ``to_pyformat``.
_PYFORMAT = frozenset({"postgresql"})

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
    """Split ``-- name: x`` blocks into {name: sql}; text before the first block is ignored,
    and so are comment lines that end a block (a section heading before the next one:
    they belong to the file, not to the query above them)."""
    queries: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=False):
        end = following.start() if following else len(text)
        name = match.group("name")
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        queries[name] = split_trailing_comments(text[match.end() : end])[0]
    return queries


def split_trailing_comments(block: str) -> tuple[str, str]:
    """``block`` as (its query, stripped; the comment lines that end it, stripped): the
    comment lines and blank lines after the last line of SQL."""
    lines = block.strip().split("\n")
    cut = len(lines)
    while cut > 0 and (not lines[cut - 1].strip() or lines[cut - 1].lstrip().startswith("--")):
        cut -= 1
    return "\n".join(lines[:cut]).strip(), "\n".join(lines[cut:]).strip()


def to_pyformat(sql: str) -> str:
    """``sql`` in the common style (``:name``) as psycopg reads it (``%(name)s``).

    A ``:name`` becomes ``%(name)s`` only in SQL text proper: inside ``'string
    literals'`` (``''`` escapes a quote), ``"quoted identifiers"``, ``-- line`` and
    ``/* block */`` comments it stays as written. ``::`` (a cast) is never a parameter,
    so ``:at::timestamptz`` is ``%(at)s::timestamptz``. Every ``%`` is doubled wherever it
    is, as psycopg scans the whole text for placeholders (comments and literals too).
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char == "%":
            out.append("%%")
            i += 1
        elif char in "'\"":
            end = _closing_quote(sql, i)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("::", i):
            out.append("::")
            i += 2
        elif char == ":" and (match := _PARAM.match(sql, i + 1)):
            out.append(f"%({match.group()})s")
            i = match.end()
        else:
            out.append(char)
            i += 1
    return "".join(out)


_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _closing_quote(sql: str, start: int) -> int:
    """The index just past the quoted text opening at ``start`` (a doubled quote is part
    of it); the end of ``sql`` if it never closes."""
    quote, i = sql[start], start + 1
    while True:
        end = sql.find(quote, i)
        if end < 0:
            return len(sql)
        if sql.startswith(quote * 2, end):
            i = end + 2
            continue
        return end + 1


def overlay_queries(common: dict[str, str], own: dict[str, str], dialect: str) -> dict[str, str]:
    """The queries ``dialect`` runs: ``common`` (translated for it) overlaid by ``own``.

    Raises ValueError for an override identical to the translated common query (it says
    nothing new: delete it from the dialect's file) and for an unknown dialect.
    """
    if dialect in _NATIVE:
        translate: Callable[[str], str] = str
    elif dialect in _PYFORMAT:
        translate = to_pyformat
    else:
        raise ValueError(f"no parameter style known for the dialect {dialect!r}")
    queries = {name: translate(sql) for name, sql in common.items()}
    same = sorted(name for name, sql in own.items() if queries.get(name) == sql)
    if same:
        raise ValueError(
            f"{dialect}/queries.sql repeats common/queries.sql word for word: "
            f"{', '.join(same)}; delete them from {dialect}/queries.sql"
        )
    queries.update(own)
    return queries


@functools.cache
def load_sql_files(dialect: str) -> SqlFiles:
    """Read and parse the SQL shipped for ``dialect`` (cached: files never change at runtime)."""
    sql = resources.files("corral.store").joinpath("sql")
    root = sql.joinpath(dialect)
    common_file = sql.joinpath("common", "queries.sql")
    common = (
        parse_named_queries(common_file.read_text("utf-8"), source="common/queries.sql")
        if common_file.is_file()
        else {}
    )
    own = parse_named_queries(_read(root, "queries.sql"), source=f"{dialect}/queries.sql")
    return SqlFiles(
        dialect=dialect,
        queries=overlay_queries(common, own, dialect),
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
