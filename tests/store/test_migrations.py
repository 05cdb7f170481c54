"""Migrations and opening: status, fresh install vs. numbered migrations, refusals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from corral.errors import MigrationError, StoreUnavailable
from corral.store import PendingMigration, open_store
from corral.store._sqlfiles import load_sql_files

RawSql = Callable[[str, str], list[tuple[Any, ...]]]
Dump = Callable[[str], dict[str, list[tuple[Any, ...]]]]
UrlFactory = Callable[[], str]

DIALECT_NAMES = ["sqlite", "postgresql"]


def known_versions(dialect: str) -> list[int]:
    return [m.version for m in load_sql_files(dialect).migrations]


async def test_migration_status_before_and_after(store_url: str) -> None:
    dialect = store_url.partition(":")[0]
    known = load_sql_files(dialect).migrations
    async with await open_store(store_url, migrate=False) as store:
        before = await store.migration_status()
        assert (before.current, before.latest, before.applied) == (0, known[-1].version, [])
        assert before.pending == [PendingMigration(m.version, m.name) for m in known]
        assert not before.up_to_date

        started = datetime.now(UTC)
        assert await store.migrate() == [m.version for m in known]
        after = await store.migration_status()
        assert (after.current, after.pending) == (known[-1].version, [])
        assert [(a.version, a.name) for a in after.applied] == [(m.version, m.name) for m in known]
        assert all(a.applied_at >= started for a in after.applied)
        assert after.up_to_date
        assert await store.migrate() == []


async def test_open_store_migrates_by_default(store_url: str) -> None:
    async with await open_store(store_url) as store:
        assert (await store.migration_status()).up_to_date


async def test_migrations_from_empty_match_the_fresh_schema(
    make_store_url: UrlFactory, schema_dump: Dump, raw_sql: RawSql
) -> None:
    fresh_url, stepwise_url = make_store_url(), make_store_url()
    async with await open_store(fresh_url) as fresh:
        dialect = fresh.dialect
    async with await open_store(stepwise_url, migrate=False) as stepwise:
        assert await stepwise.migrate(install_schema=False) == known_versions(dialect)
    assert schema_dump(stepwise_url) == schema_dump(fresh_url)
    recorded = raw_sql(stepwise_url, "SELECT version FROM corral_migrations ORDER BY version")
    assert [row[0] for row in recorded] == known_versions(dialect)


async def test_a_database_newer_than_the_code_is_refused(store_url: str, raw_sql: RawSql) -> None:
    async with await open_store(store_url):
        pass
    raw_sql(
        store_url,
        "INSERT INTO corral_migrations (version, name, applied_at) "
        "VALUES (9999, 'from_the_future', '2030-01-01T00:00:00.000000+00:00')",
    )
    with pytest.raises(MigrationError, match=r"schema version 9999.*upgrade corral"):
        await open_store(store_url)
    async with await open_store(store_url, migrate=False) as store:
        status = await store.migration_status()
        assert status.current == 9999
        with pytest.raises(MigrationError, match="upgrade corral"):
            await store.migrate()


async def test_a_failing_migration_is_a_migration_error(store_url: str, raw_sql: RawSql) -> None:
    async with await open_store(store_url, migrate=False) as store:
        await store.migrate(install_schema=False)
    raw_sql(store_url, "DELETE FROM corral_migrations")  # 0001 looks pending; its table exists
    async with await open_store(store_url, migrate=False) as store:
        with pytest.raises(MigrationError, match=r"migration 0001_initial failed on .*corral_runs"):
            await store.migrate(install_schema=False)
        with pytest.raises(MigrationError, match=r"schema.sql failed on .*corral_runs"):
            await store.migrate()


@pytest.mark.parametrize("name", DIALECT_NAMES)
def test_migration_files_are_numbered_alike_in_every_dialect(name: str) -> None:
    files = load_sql_files(name)
    assert [(m.version, m.name) for m in files.migrations] == [
        (m.version, m.name) for m in load_sql_files("sqlite").migrations
    ]
    assert files.latest_version == len(files.migrations) >= 1


def test_both_dialects_define_the_same_named_queries() -> None:
    sqlite, postgres = (set(load_sql_files(d).queries) for d in DIALECT_NAMES)
    # rlock, runlock, rlock_heartbeat: PostgreSQL's one-round-trip lock functions (0013);
    # SQLite runs the same steps as one body on its worker thread. lock_batch: many of
    # those calls at once, one commit (0018); SQLite batches its bodies already (D10).
    # finalize_run, find_receipt_deliveries, insert_receipts: PostgreSQL's one statement
    # for finalize and its batched receipts (D45, D46); SQLite runs the same steps in a body.
    # claim_batch: PostgreSQL's one-statement claim; SQLite claims in its transaction.
    batched = {
        "claim_batch",
        "finalize_run",
        "lock_item_to_end",
        "lock_run_to_end",
        "lock_agent_to_end",
        "find_receipt_deliveries",
        "insert_receipts",
        # enqueue_items, enqueue_request, create_call: one round trip each (0017, D60).
        "enqueue_items",
        "enqueue_request",
        "create_call",
        # the task board's claims, ends and claim lookups while one is in flight (D123)
        "claim_tasks_batch",
        "finish_tasks_batch",
        "claimed_tasks_of_runs",
    }
    assert (
        postgres - sqlite
        == {"lock_migrations", "rlock", "runlock", "rlock_heartbeat", "lock_batch"} | batched
    )
    assert sqlite <= postgres


async def test_unreachable_postgres_is_store_unavailable() -> None:
    url = "postgresql://corral:s3cret@127.0.0.1:1/nowhere"
    with pytest.raises(StoreUnavailable) as caught:
        await open_store(url)
    message = str(caught.value)
    assert "postgresql://corral:***@127.0.0.1:1/nowhere" in message
    assert "s3cret" not in message


async def test_unwritable_sqlite_path_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker}/state.db"
    with pytest.raises(StoreUnavailable, match=r"cannot open the SQLite store sqlite:///.*a-file"):
        await open_store(url)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:///relative/state.db", "absolute path"),
        ("mysql://u@h/db", "unknown scheme 'mysql'"),
        ("redis://:pw@h/0", r"redis://:\*\*\*@h/0"),
    ],
)
async def test_bad_urls_are_store_unavailable(url: str, match: str) -> None:
    with pytest.raises(StoreUnavailable, match=match):
        await open_store(url)


@pytest.mark.parametrize(
    "dialect", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_postgres_scheme_alias(make_store_url: UrlFactory) -> None:
    url = make_store_url().replace("postgresql://", "postgres://", 1)
    async with await open_store(url) as store:
        assert store.dialect == "postgresql"
