"""Fixtures of the store suite: raw access to a store's database, bypassing the store.

The ``dialect``, ``store_url`` and ``store`` fixtures come from ``tests/conftest.py``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from corral.store import NewRun, Run, Store, TriggerKind

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


# -- a controllable clock --------------------------------------------------------------


class Clock:
    """A store clock that stands still until a test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(store: Store) -> Clock:
    """A standing clock installed in ``store``."""
    ticking = Clock()
    store.clock = ticking
    return ticking


async def live_run(store: Store, agent: str = "a") -> Run:
    """A run outside the queue (state starting): enough to hold locks and send signals."""
    return await store.create_run(NewRun(agent=agent, trigger=TriggerKind.MANUAL))
