"""The migration runner: the same steps for every dialect.

Versions applied are recorded in ``corral_migrations(version, name, applied_at)``, a table
in the same schema as the rest. Each step is one transaction that first excludes other
migrators (PostgreSQL: an advisory transaction lock per schema; SQLite: BEGIN IMMEDIATE),
then re-reads what is applied, so two processes starting at once never both migrate:

- nothing applied: install ``schema.sql`` and record every known version (one step);
- otherwise: apply the lowest pending migration and record it; repeat until none pend.

A database that records a version newer than this code knows is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.errors import MigrationError, StoreError
from corral.store._time import utc_now
from corral.store.records import AppliedMigration, MigrationStatus, PendingMigration

if TYPE_CHECKING:
    from corral.store._base import Store, Transaction
    from corral.store._sqlfiles import Migration

__all__ = ["Migrator"]


class Migrator:
    """Applies one store's pending migrations; see the module docstring."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._known = store.sql.migrations
        self._latest = store.sql.latest_version

    async def migrate(self, *, install_schema: bool = True) -> list[int]:
        applied_now: list[int] = []
        while step := await self._step(install_schema=install_schema):
            applied_now += step
        return applied_now

    async def status(self) -> MigrationStatus:
        async with self._store.transaction(write=False) as tx:
            exists = await tx.fetch_one("migrations_table_exists")
            applied = await self._applied(tx) if exists and exists["present"] else []
        done = {m.version for m in applied}
        return MigrationStatus(
            current=max(done, default=0),
            latest=self._latest,
            applied=applied,
            pending=[
                PendingMigration(m.version, m.name) for m in self._known if m.version not in done
            ],
        )

    async def _step(self, *, install_schema: bool) -> list[int]:
        """One transaction: apply the schema or the next migration; [] when up to date."""
        try:
            async with self._store.transaction() as tx:
                await self._prepare(tx)
                done = {m.version for m in await self._applied(tx)}
                self._refuse_newer(done)
                if not done and install_schema:
                    return await self._install_schema(tx)
                pending = [m for m in self._known if m.version not in done]
                return [await self._apply(tx, pending[0])] if pending else []
        except MigrationError:
            raise
        except StoreError as exc:
            raise MigrationError(f"schema migration failed: {exc}") from exc

    async def _prepare(self, tx: Transaction) -> None:
        lock = self._store.migration_lock_query
        if lock is not None:
            await tx.execute(lock)
        await tx.execute("create_migrations_table")

    async def _applied(self, tx: Transaction) -> list[AppliedMigration]:
        rows = await tx.fetch_all("applied_migrations")
        decode = self._store.decode_time
        return [AppliedMigration(r["version"], r["name"], decode(r["applied_at"])) for r in rows]

    def _refuse_newer(self, done: set[int]) -> None:
        newest = max(done, default=0)
        if newest > self._latest:
            raise MigrationError(
                f"the database at {self._store.url} is at schema version {newest}, newer than "
                f"this corral knows (version {self._latest}); upgrade corral to use it"
            )

    async def _install_schema(self, tx: Transaction) -> list[int]:
        await tx.execute_script(self._store.sql.schema, what=f"{self._store.dialect} schema.sql")
        for migration in self._known:
            await self._record(tx, migration)
        return [m.version for m in self._known]

    async def _apply(self, tx: Transaction, migration: Migration) -> int:
        what = f"migration {migration.version:04d}_{migration.name}"
        await tx.execute_script(migration.sql, what=what)
        await self._record(tx, migration)
        return migration.version

    async def _record(self, tx: Transaction, migration: Migration) -> None:
        params = {
            "version": migration.version,
            "name": migration.name,
            "applied_at": self._store.encode_time(utc_now()),
        }
        await tx.execute("record_migration", params)
