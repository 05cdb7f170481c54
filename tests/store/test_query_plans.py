"""Work that grows with history stays flat: every hot query reads an index, never the
whole of corral_runs or corral_queue, on a store with 1,000 agents and 100,000 finished
runs; retention deletes finished items with their runs and leaves no dangling reference.

The history is seeded with bulk SQL (not through the store) so that it takes seconds.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from corral.store import AgentSpec, ItemState, NewItem, RunState, Store, TriggerKind, open_store
from corral.store._sqlfiles import load_sql_files

HISTORY = 100_000
AGENTS = 1_000
BIG = ("corral_runs", "corral_queue")

#: Named queries on a hot path or a page: claim, enqueue, stat, runs, the dashboard,
#: /metrics, lease upkeep and retention.
HOT = (
    "claimable", "claimable_item", "lock_agent_state", "count_active", "drop_oldest",
    "find_dedupe", "insert_claim_runs", "claim_items", "finish_item", "get_item", "get_run",
    "lapsed_items", "owner_items", "renew_leases", "renew_run_leases", "requeue_item",
    "agent_states", "agent_state", "list_live_runs", "list_runs", "list_agent_runs",
    "list_open_items", "list_set_aside_items", "list_agent_items", "kill_requests",
    "metrics_runs_since", "metrics_items_set_aside_since", "spend_since", "usage_by_day",
    "spend_by_agent_since", "fleet_busy_by_runner",
    "prune_runs", "prune_items", "finish_run", "request_kill", "set_run_status_live",
    "page_runs", "page_agent_runs", "calls_made_by", "call_answered_by", "child_runs",
    "runner_holdings", "claimed_for_runner", "runs_ended_by_agent_and_runner",
    "runs_ended_by_hour", "live_runs_by_runner_and_bundle", "renew_runner_leases",
    "any_lapsed",
)  # fmt: skip
#: PostgreSQL's own hot queries (no SQLite twin): the one-statement batch claim.
HOT_PG = ("claim_batch",)

#: Reads whose plan must name this index: a range over every run ever created (say) is a
#: search, not a scan, but it reads the whole history all the same.
EXPECTED_INDEX = {
    "list_live_runs": "corral_runs_live",
    "list_open_items": "corral_queue_open",
    "list_set_aside_items": "corral_queue_set_aside",
    "prune_items": "corral_queue_finished",
    "prune_runs": "corral_runs_ended",
    "page_runs": "corral_runs_created",
    "page_agent_runs": "corral_runs_agent_created",
    "runs_ended_by_agent_and_runner": "corral_runs_ended",
    "runs_ended_by_hour": "corral_runs_ended",
    "live_runs_by_runner_and_bundle": "corral_runs_live",
}

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PARAMS: dict[str, Any] = {
    "now": NOW, "since": NOW - timedelta(seconds=15), "epoch": datetime(1970, 1, 1, tzinfo=UTC),
    "older_than": NOW - timedelta(days=30),
    "expires_at": NOW + timedelta(minutes=1), "limit": 50, "batch": 500, "n": 1,
    "agent": "agent-0001", "item_id": 5, "id": "run-000005", "run_id": "run-000005",
    "owner": "sched-1", "fence": 5, "dedupe_key": "k", "reason": "r", "state": "failed",
    "exit_code": 1, "error": "e", "ended_at": NOW, "status_text": "s",
    "plan": '[{"item_id": 5, "run_id": "run-new", "fence": 9}]', "bundle": None,
    "until": datetime(9999, 12, 31, tzinfo=UTC), "before_at": NOW - timedelta(days=60),
    "before_id": "run-050000", "search": "", "restricted": True,
}  # fmt: skip


#: Queries whose :id is a queue item's (an integer), not a run's.
_ITEM_ID = {"get_item", "requeue_item"}


def _param(name: str, dialect: str, query: str = "") -> Any:
    if name == "id" and query in _ITEM_ID:
        return 5
    if name == "since" and query.startswith(("list_", "page_")):
        # The status document and the dashboard list without a since: from the epoch.
        return _param("epoch", dialect)
    if name == "triggers":
        kinds = ["schedule", "webhook"]
        return f'["{kinds[0]}", "{kinds[1]}"]' if dialect == "sqlite" else kinds
    if name == "states":
        states = ["starting", "running"]
        return f'["{states[0]}", "{states[1]}"]' if dialect == "sqlite" else states
    if name == "secret_hashes":
        return ["0" * 64, "1" * 64]
    if name == "agents":
        return '["agent-0001"]' if dialect == "sqlite" else ["agent-0001"]
    if name == "run_ids":
        return '["run-000005"]' if dialect == "sqlite" else ["run-000005"]
    if name == "held":
        return '["run-000005:5"]' if dialect == "sqlite" else ["run-000005:5"]
    value = PARAMS[name]
    if isinstance(value, datetime) and dialect == "sqlite":
        return value.isoformat(timespec="microseconds")
    return value


# -- seeding -----------------------------------------------------------------------------

_SQLITE_TIME = "strftime('%Y-%m-%dT%H:%M:%S.000000+00:00', '2026-01-01', '+' || {} || ' minutes')"

_SQLITE_SEED = f"""
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {AGENTS - 1})
INSERT INTO corral_agents (agent, scale, queue_size, updated_at)
SELECT printf('agent-%04d', i), 2, 20, '2026-01-01T00:00:00.000000+00:00' FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {HISTORY})
INSERT INTO corral_queue (id, agent, trigger_kind, state, enqueued_at, claimed_at,
                          finished_at, attempts, max_attempts, fence, run_id)
SELECT i, printf('agent-%04d', i % {AGENTS}), 'schedule',
       CASE WHEN i % 50 = 0 THEN 'dropped' ELSE 'done' END,
       {_SQLITE_TIME.format("i")}, {_SQLITE_TIME.format("i")},
       {_SQLITE_TIME.format("(i + 1)")}, 1, 3, i, NULL FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {HISTORY})
INSERT INTO corral_runs (id, agent, trigger_kind, state, created_at, started_at, ended_at,
                         item_id, fence, attempt)
SELECT printf('run-%06d', i), printf('agent-%04d', i % {AGENTS}), 'schedule', 'succeeded',
       {_SQLITE_TIME.format("i")}, {_SQLITE_TIME.format("i")},
       {_SQLITE_TIME.format("(i + 1)")}, i, i, 1 FROM n;
UPDATE corral_queue SET run_id = printf('run-%06d', id);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {2 * AGENTS})
INSERT INTO corral_queue (id, agent, trigger_kind, state, enqueued_at, claimed_at, attempts,
                          max_attempts, lease_owner, lease_expires_at, fence)
SELECT {HISTORY} + i, printf('agent-%04d', i % {AGENTS}), 'schedule',
       CASE WHEN i <= {AGENTS} THEN 'claimed' ELSE 'queued' END,
       '2026-06-01T00:00:00.000000+00:00',
       CASE WHEN i <= {AGENTS}
            THEN strftime('%Y-%m-%dT%H:%M:%S.000000+00:00', '2026-06-01',
                          '-' || (4 * i) || ' seconds')
       END,
       CASE WHEN i <= {AGENTS} THEN 1 ELSE 0 END, 3,
       CASE WHEN i <= {AGENTS} THEN 'sched-1' END,
       CASE WHEN i <= {AGENTS} THEN '2026-06-01T00:01:00.000000+00:00' END,
       CASE WHEN i <= {AGENTS} THEN {HISTORY} + i END FROM n;
INSERT INTO corral_runs (id, agent, trigger_kind, state, created_at, started_at, item_id,
                         fence, attempt, owner)
SELECT printf('live-%06d', id), agent, 'schedule', 'running', claimed_at, claimed_at, id,
       fence, 1, 'sched-1'
FROM corral_queue WHERE state = 'claimed';
UPDATE corral_queue SET run_id = printf('live-%06d', id) WHERE state = 'claimed';
COMMIT;
"""

_PG_TIME = "timestamptz '2026-01-01 00:00+00' + make_interval(mins => {})"

_PG_SEED = f"""
INSERT INTO corral_agents (agent, scale, queue_size, updated_at)
SELECT format('agent-%s', lpad(i::text, 4, '0')), 2, 20, now()
FROM generate_series(0, {AGENTS - 1}) i;
INSERT INTO corral_queue (id, agent, trigger_kind, state, enqueued_at, claimed_at,
                          finished_at, attempts, max_attempts, fence)
OVERRIDING SYSTEM VALUE
SELECT i, format('agent-%s', lpad((i % {AGENTS})::text, 4, '0')), 'schedule',
       CASE WHEN i % 50 = 0 THEN 'dropped' ELSE 'done' END,
       {_PG_TIME.format("i")}, {_PG_TIME.format("i")}, {_PG_TIME.format("i + 1")}, 1, 3, i
FROM generate_series(1, {HISTORY}) i;
INSERT INTO corral_runs (id, agent, trigger_kind, state, created_at, started_at, ended_at,
                         item_id, fence, attempt)
SELECT format('run-%s', lpad(i::text, 6, '0')),
       format('agent-%s', lpad((i % {AGENTS})::text, 4, '0')), 'schedule', 'succeeded',
       {_PG_TIME.format("i")}, {_PG_TIME.format("i")}, {_PG_TIME.format("i + 1")}, i, i, 1
FROM generate_series(1, {HISTORY}) i;
UPDATE corral_queue SET run_id = format('run-%s', lpad(id::text, 6, '0'));
INSERT INTO corral_queue (id, agent, trigger_kind, state, enqueued_at, claimed_at, attempts,
                          max_attempts, lease_owner, lease_expires_at, fence)
OVERRIDING SYSTEM VALUE
SELECT {HISTORY} + i, format('agent-%s', lpad((i % {AGENTS})::text, 4, '0')), 'schedule',
       CASE WHEN i <= {AGENTS} THEN 'claimed' ELSE 'queued' END,
       timestamptz '2026-06-01 00:00+00',
       CASE WHEN i <= {AGENTS}
            THEN timestamptz '2026-06-01 00:00+00' - make_interval(secs => 4 * i) END,
       CASE WHEN i <= {AGENTS} THEN 1 ELSE 0 END, 3,
       CASE WHEN i <= {AGENTS} THEN 'sched-1' END,
       CASE WHEN i <= {AGENTS} THEN timestamptz '2026-06-01 00:01+00' END,
       CASE WHEN i <= {AGENTS} THEN {HISTORY} + i END
FROM generate_series(1, {2 * AGENTS}) i;
INSERT INTO corral_runs (id, agent, trigger_kind, state, created_at, started_at, item_id,
                         fence, attempt, owner)
SELECT format('live-%s', id), agent, 'schedule', 'running', claimed_at, claimed_at, id,
       fence, 1, 'sched-1'
FROM corral_queue WHERE state = 'claimed';
UPDATE corral_queue SET run_id = format('live-%s', id) WHERE state = 'claimed';
"""


async def _migrated(url: str) -> None:
    async with await open_store(url):
        pass


# -- plans -------------------------------------------------------------------------------


def _aliases(sql: str) -> set[str]:
    """corral_runs, corral_queue and every alias a query gives them."""
    names = set(BIG)
    for match in re.finditer(r"\b(?:corral_runs|corral_queue)\s+(?:AS\s+)?(\w+)", sql, re.I):
        if match.group(1).upper() not in {"WHERE", "SET", "INDEXED", "ORDER", "LIMIT", "ON"}:
            names.add(match.group(1))
    return names


def _sqlite_full_scans(conn: sqlite3.Connection, name: str, sql: str) -> list[str]:
    """Plan lines that walk all of a big table: a SCAN of it, or of a full index of it."""
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
    partial = {index for index, text in indexes if "WHERE" in (text or "")}
    params = {key: _param(key, "sqlite", name) for key in set(re.findall(r":(\w+)", sql))}
    big = _aliases(sql)
    bad = []
    plan = [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    if name in EXPECTED_INDEX and not any(EXPECTED_INDEX[name] in line for line in plan):
        bad.append(f"{name}: {EXPECTED_INDEX[name]} unused: {plan}")
    for detail in plan:
        scan = re.match(r"SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", detail)
        if scan and scan.group(1) in big and scan.group(2) not in partial:
            bad.append(f"{name}: {detail}")
    return bad


def _pg_seq_scans(plan: dict[str, Any], name: str) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in BIG:
        found.append(f"{name}: Seq Scan on {plan['Relation Name']} (rows {plan.get('Plan Rows')})")
    for child in plan.get("Plans", []):
        found.extend(_pg_seq_scans(child, name))
    return found


def _sqlite_check(path: str) -> list[str]:
    queries = load_sql_files("sqlite").queries
    conn = sqlite3.connect(path)
    try:
        return [line for name in HOT for line in _sqlite_full_scans(conn, name, queries[name])]
    finally:
        conn.close()


def _pg_check(url: str) -> list[str]:
    queries = load_sql_files("postgresql").queries
    bad = []
    with psycopg.connect(url, autocommit=True) as conn:
        for name in HOT + HOT_PG:
            sql = queries[name]
            keys = re.findall(r"%\((\w+)\)s", sql)
            params = {key: _param(key, "postgresql", name) for key in keys}
            with psycopg.ClientCursor(conn, row_factory=dict_row) as cursor:
                # Inside a transaction rolled back after: EXPLAIN of a DELETE changes nothing
                # anyway, but FOR UPDATE needs one.
                cursor.execute("BEGIN")
                cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
                plan = cursor.fetchone()
                cursor.execute("ROLLBACK")
            assert plan is not None
            tree = next(iter(plan.values()))[0]["Plan"]
            bad.extend(_pg_seq_scans(tree, name))
            if name in EXPECTED_INDEX and EXPECTED_INDEX[name] not in str(tree):
                bad.append(f"{name}: {EXPECTED_INDEX[name]} unused: {tree}")
    return bad


@pytest.mark.slow
async def test_no_hot_query_scans_the_history(dialect: str, store_url: str) -> None:
    await _migrated(store_url)
    if dialect == "sqlite":
        path = store_url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.executescript(_SQLITE_SEED)
        conn.close()
        # Without statistics first (a store corral never ANALYZEs), then with them.
        assert _sqlite_check(path) == []
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("ANALYZE")
        conn.close()
        assert _sqlite_check(path) == []
    else:
        with psycopg.connect(store_url, autocommit=True) as pg:
            pg.execute(_PG_SEED.encode())
            pg.execute("ANALYZE")
        assert _pg_check(store_url) == []


# -- foreign keys into the history are indexed ---------------------------------------------


def _sqlite_unindexed_fks(path: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        missing = []
        for table in tables:
            leading = {
                conn.execute(f"PRAGMA index_info('{index[1]}')").fetchone()[2]
                for index in conn.execute(f"PRAGMA index_list('{table}')")
            }
            columns = conn.execute(f"PRAGMA table_info('{table}')").fetchall()
            leading.update(column[1] for column in columns if column[5] == 1)  # primary key
            for fk in conn.execute(f"PRAGMA foreign_key_list('{table}')"):
                if fk[2] in BIG and fk[3] not in leading:
                    missing.append(f"{table}.{fk[3]} -> {fk[2]}")
        return missing
    finally:
        conn.close()


_PG_UNINDEXED_FKS = """
SELECT c.conrelid::regclass::text || '.' || a.attname
FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace
  AND c.confrelid::regclass::text IN ('corral_runs', 'corral_queue')
  AND NOT EXISTS (SELECT 1 FROM pg_index i
                  WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1])
"""


async def test_every_reference_to_a_run_or_item_is_indexed(dialect: str, store_url: str) -> None:
    """Deleting a run or an item updates (SET NULL) or deletes (CASCADE) the rows that
    refer to it: each such column needs an index, or each deletion scans its table."""
    await _migrated(store_url)
    if dialect == "sqlite":
        assert _sqlite_unindexed_fks(store_url.removeprefix("sqlite:///")) == []
    else:
        with psycopg.connect(store_url, autocommit=True) as conn:
            assert conn.execute(_PG_UNINDEXED_FKS.encode()).fetchall() == []


# -- batched retention ---------------------------------------------------------------------


async def _finished_item(store: Store, agent: str, parent: str | None = None) -> str:
    await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL, parent_run_id=parent))
    claims = await store.claim("sched-1", lease_seconds=60, limit=1)
    assert len(claims) == 1
    claim = claims[0]
    await store.finalize(
        claim.run.id, fence=claim.item.fence or 0, state=RunState.SUCCEEDED, exit_code=0
    )
    return str(claim.run.id)


async def test_batched_prune_deletes_finished_items_and_leaves_no_dangling_reference(
    store: Store, raw_sql: Any, store_url: str
) -> None:
    await store.sync_project([AgentSpec("a", 5, 100)], scale_cap=None, max_attempts=3, max_reruns=2)
    store.prune_batch = 3  # several batches from a few rows
    store.prune_pause = 0.0
    parent = await _finished_item(store, "a")
    for _ in range(7):
        await _finished_item(store, "a", parent)
    kept = await store.enqueue(NewItem(agent="a", trigger=TriggerKind.MANUAL))

    later = datetime.now(UTC) + timedelta(hours=1)
    assert await store.prune_runs(later) == 8
    assert await store.prune_items(later) == 8
    assert await store.count_runs() == 0
    left = await store.list_items(limit=100)
    assert [item.id for item in left] == [kept.item.id]
    assert left[0].state is ItemState.QUEUED
    for check in (
        "SELECT count(*) FROM corral_queue WHERE run_id IS NOT NULL "
        "AND run_id NOT IN (SELECT id FROM corral_runs)",
        "SELECT count(*) FROM corral_queue WHERE parent_run_id IS NOT NULL "
        "AND parent_run_id NOT IN (SELECT id FROM corral_runs)",
        "SELECT count(*) FROM corral_runs WHERE item_id IS NOT NULL "
        "AND item_id NOT IN (SELECT id FROM corral_queue)",
        "SELECT count(*) FROM corral_calls WHERE item_id IS NOT NULL "
        "AND item_id NOT IN (SELECT id FROM corral_queue)",
    ):
        assert raw_sql(store_url, check) == [(0,)], check


# -- the task board ------------------------------------------------------------------------

#: The board's hot statements: claims, the claim's upkeep, and the reads of a task.
TASK_HOT = (
    "claim_task", "claim_project_task", "heartbeat_task", "finish_task", "release_task",
    "release_stalled_tasks", "release_run_tasks", "claimed_task_of_run", "get_task",
    "task_events", "task_dependents", "find_tasks",
)  # fmt: skip
#: The claims must walk the open-task index in claim order, not sort the board.
TASK_INDEX = {"claim_task": "corral_tasks_open", "claim_project_task": "corral_tasks_project_open"}
TASKS_DONE = 50_000
TASKS_OPEN = 1_000
TASK_PARAMS: dict[str, Any] = {
    "claimer": "agent-1", "run_id": "run-1", "project": "p", "id": "t-000001",
    "token": 1, "status": "done", "result": None, "now": NOW,
    "expires_at": NOW + timedelta(minutes=10), "min_priority": 1,
}  # fmt: skip

_SQLITE_TASK_SEED = f"""
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {TASKS_DONE + TASKS_OPEN})
INSERT INTO corral_tasks (project, id, title, priority, status, created_at, updated_at, token)
SELECT 'p', printf('t-%06d', i), 'a task', 1 + i % 10,
       CASE WHEN i <= {TASKS_DONE} THEN 'done' ELSE 'open' END,
       {_SQLITE_TIME.format("i")}, {_SQLITE_TIME.format("i")}, 1 FROM n;
INSERT INTO corral_task_edges (project, task_id, requires)
SELECT 'p', id, printf('t-%06d', CAST(substr(id, 3) AS INTEGER) - 1)
FROM corral_tasks WHERE status = 'open' AND CAST(substr(id, 3) AS INTEGER) % 2 = 0;
INSERT INTO corral_task_labels (project, task_id, label)
SELECT project, id, 'backend' FROM corral_tasks WHERE CAST(substr(id, 3) AS INTEGER) % 3 = 0;
INSERT INTO corral_task_events (project, task_id, at, kind)
SELECT project, id, created_at, 'created' FROM corral_tasks;
COMMIT;
"""

_PG_TASK_SEED = f"""
INSERT INTO corral_tasks (project, id, title, priority, status, created_at, updated_at, token)
SELECT 'p', format('t-%s', lpad(i::text, 6, '0')), 'a task', 1 + i % 10,
       CASE WHEN i <= {TASKS_DONE} THEN 'done' ELSE 'open' END,
       {_PG_TIME.format("i")}, {_PG_TIME.format("i")}, 1
FROM generate_series(1, {TASKS_DONE + TASKS_OPEN}) i;
INSERT INTO corral_task_edges (project, task_id, requires)
SELECT 'p', id, format('t-%s', lpad((substr(id, 3)::int - 1)::text, 6, '0'))
FROM corral_tasks WHERE status = 'open' AND substr(id, 3)::int % 2 = 0;
INSERT INTO corral_task_labels (project, task_id, label)
SELECT project, id, 'backend' FROM corral_tasks WHERE substr(id, 3)::int % 3 = 0;
INSERT INTO corral_task_events (project, task_id, at, kind)
SELECT project, id, created_at, 'created' FROM corral_tasks;
"""


def _task_param(key: str, dialect: str) -> Any:
    if key == "labels":
        return '["backend"]' if dialect == "sqlite" else ["backend"]
    value = TASK_PARAMS[key]
    if isinstance(value, datetime) and dialect == "sqlite":
        return value.isoformat(timespec="microseconds")
    return value


def _pg_task_seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name", "").startswith(
        "corral_task"
    ):
        found.append(f"Seq Scan on {plan['Relation Name']} (rows {plan.get('Plan Rows')})")
    for child in plan.get("Plans", []):
        found.extend(_pg_task_seq_scans(child))
    return found


@pytest.mark.slow
async def test_task_board_queries_read_indexes(dialect: str, store_url: str) -> None:
    """On a board with 50,000 done tasks and 1,000 open ones (half waiting for another),
    the claims walk the open-task index in claim order and no hot statement scans a table
    of the board."""
    await _migrated(store_url)
    bad: list[str] = []
    if dialect == "sqlite":
        path = store_url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.executescript(_SQLITE_TASK_SEED)
        conn.execute("ANALYZE")
        queries = load_sql_files("sqlite").queries
        for name in TASK_HOT:
            sql = queries[name]
            params = {key: _task_param(key, dialect) for key in set(re.findall(r":(\w+)", sql))}
            plan = [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            if name in TASK_INDEX and not any(TASK_INDEX[name] in line for line in plan):
                bad.append(f"{name}: {TASK_INDEX[name]} unused: {plan}")
            for line in plan:
                if re.match(r"SCAN corral_task\w*( |$)", line) and "INDEX" not in line:
                    bad.append(f"{name}: {line}")
                if "TEMP B-TREE FOR ORDER BY" in line:
                    bad.append(f"{name}: sorts: {line}")
        conn.close()
    else:
        queries = load_sql_files("postgresql").queries
        with psycopg.connect(store_url, autocommit=True) as pg:
            pg.execute(_PG_TASK_SEED.encode())
            pg.execute("ANALYZE")
            for name in TASK_HOT:
                sql = queries[name]
                keys = re.findall(r"%\((\w+)\)s", sql)
                params = {key: _task_param(key, dialect) for key in keys}
                with psycopg.ClientCursor(pg, row_factory=dict_row) as cursor:
                    cursor.execute("BEGIN")
                    cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
                    row = cursor.fetchone()
                    cursor.execute("ROLLBACK")
                assert row is not None
                tree = next(iter(row.values()))[0]["Plan"]
                bad.extend(f"{name}: {line}" for line in _pg_task_seq_scans(tree))
                if name in TASK_INDEX and TASK_INDEX[name] not in str(tree):
                    bad.append(f"{name}: {TASK_INDEX[name]} unused: {tree}")
                if name in TASK_INDEX and "'Node Type': 'Sort'" in str(tree):
                    bad.append(f"{name}: sorts: {tree}")
    assert bad == []
