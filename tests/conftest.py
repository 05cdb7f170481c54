"""Fixtures shared by every suite: a test taking ``store_url`` or ``store`` runs on both
SQLite (a file under tmp_path) and PostgreSQL (a fresh schema per test, dropped after).

PostgreSQL comes from ``CORRAL_TEST_PG_URL`` (default below). When it is unreachable the
PostgreSQL cases are skipped, unless ``CORRAL_REQUIRE_POSTGRES=1`` makes that a failure.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
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


@pytest.fixture(scope="session", autouse=True)
def private_corral_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A corral home of the test session's own, so that no test writes to the real
    ``~/.corral`` (credentials, the registry of state directories); a test that needs
    another one sets ``CORRAL_HOME`` itself."""
    home = tmp_path_factory.mktemp("corral-home")
    before = os.environ.get("CORRAL_HOME")
    os.environ["CORRAL_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("CORRAL_HOME", None)
    else:
        os.environ["CORRAL_HOME"] = before


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
