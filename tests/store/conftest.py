"""Fixtures for the store suite: every test taking ``store_url`` or ``store`` runs on both
SQLite (a file under tmp_path) and PostgreSQL (a fresh schema per test, dropped after).

PostgreSQL comes from ``CORRAL_TEST_PG_URL`` (default below). When it is unreachable the
PostgreSQL cases are skipped, unless ``CORRAL_REQUIRE_POSTGRES=1`` makes that a failure.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from corral.store import Store, open_store

PG_BASE_URL = os.environ.get("CORRAL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DIALECTS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

UrlFactory = Callable[[], str]


@functools.cache
def _postgres_problem() -> str | None:
    try:
        with psycopg.connect(PG_BASE_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_BASE_URL} is unreachable: {str(exc).strip()}"


def require_postgres() -> None:
    """Skip (or, with CORRAL_REQUIRE_POSTGRES=1, fail) when PostgreSQL is unreachable."""
    problem = _postgres_problem()
    if problem is None:
        return
    if os.environ.get("CORRAL_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{problem} (CORRAL_REQUIRE_POSTGRES=1 demands it; start PostgreSQL)")
    pytest.skip(problem)


def with_search_path(url: str, schema: str) -> str:
    option = quote(f"-csearch_path={schema}", safe="-")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


def _pg_admin(sql: str) -> None:
    with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
        conn.execute(sql.encode())


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@pytest.fixture
def make_store_url(dialect: str, tmp_path: Path) -> Iterator[UrlFactory]:
    """A factory of fresh, empty store URLs of this test's dialect."""
    schemas: list[str] = []

    def make() -> str:
        name = f"corral_test_{secrets.token_hex(6)}"
        if dialect == "sqlite":
            return f"sqlite:///{tmp_path / name / 'state.db'}"
        _pg_admin(f'CREATE SCHEMA "{name}"')
        schemas.append(name)
        return with_search_path(PG_BASE_URL, name)

    yield make
    for name in schemas:
        _pg_admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def store_url(make_store_url: UrlFactory) -> str:
    return make_store_url()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with await open_store(store_url) as opened:
        yield opened


# -- direct access, bypassing the store ----------------------------------------------


@pytest.fixture
def raw_sql() -> Callable[[str, str], list[tuple[Any, ...]]]:
    """``raw_sql(url, sql)``: run one statement with the bare driver, not the store."""
    return _raw_sql


@pytest.fixture
def schema_dump() -> Callable[[str], dict[str, list[tuple[Any, ...]]]]:
    """``schema_dump(url)``: the store's schema, normalised for comparison."""
    return _schema_dump


def _raw_sql(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one parameterless statement on the store's database with the bare driver."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as pg:
        cursor = pg.execute(sql.encode())
        return cursor.fetchall() if cursor.description else []


def _schema_dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """A normalised description of the store's tables, columns, indexes and constraints."""
    if url.startswith("sqlite:///"):
        return _sqlite_dump(url)
    return _postgres_dump(url)


def _normalise_sql(sql: str | None) -> str:
    without_comments = re.sub(r"--[^\n]*", "", sql or "")
    return " ".join(without_comments.split())


def _sqlite_dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    objects = _raw_sql(url, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
    tables = [name for kind, name, _, _ in objects if kind == "table"]
    dump: dict[str, list[tuple[Any, ...]]] = {
        "objects": [(kind, name, table) for kind, name, table, _ in objects],
        "indexes": [
            (name, _normalise_sql(sql)) for kind, name, _, sql in objects if kind == "index"
        ],
    }
    for table in tables:
        columns = _raw_sql(url, f"PRAGMA table_xinfo({table})")
        dump[f"columns {table}"] = sorted(row[1:] for row in columns)
        dump[f"foreign keys {table}"] = sorted(
            row[2:] for row in _raw_sql(url, f"PRAGMA foreign_key_list({table})")
        )
        checks = re.findall(
            r"CHECK\s*\((?:[^()]|\([^()]*\))*\)", _normalise_sql(_table_sql(objects, table))
        )
        dump[f"checks {table}"] = sorted((check,) for check in checks)
    return dump


def _table_sql(objects: list[tuple[Any, ...]], table: str) -> str:
    return next(str(sql) for kind, name, _, sql in objects if kind == "table" and name == table)


def _postgres_dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    schema = _raw_sql(url, "SELECT current_schema()")[0][0]
    columns = _raw_sql(
        url,
        "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "ORDER BY table_name, column_name",
    )
    indexes = _raw_sql(
        url,
        "SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = current_schema() ORDER BY indexname",
    )
    constraints = _raw_sql(
        url,
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = current_schema()::regnamespace ORDER BY 1, 2",
    )
    return {
        "columns": columns,
        "indexes": [(t, n, d.replace(f"{schema}.", "")) for t, n, d in indexes],
        "constraints": constraints,
    }
