"""Webhook intake on PostgreSQL reads a few index entries per delivery, not the queue or
the receipts: also once the server's plan cache has settled on generic plans.

PL/pgSQL functions and statements psycopg prepares run on cached plans; after five runs the
server may keep one generic plan, made without the parameters' values. These tests make
those plans while the store is empty (as a fresh store is, when the first deliveries come),
then fill the queue and the receipts with thousands of rows and count, with the server's
own statistics, how many rows the next deliveries' statements read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from corral.store import AgentSpec, open_store
from corral.store._sqlfiles import load_sql_files

FILLED = 3_000
#: Rows one delivery's lookup may read (its own key, an alias or two), whatever the history.
PER_CALL = 4

pytestmark = pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)


def _rows_read(conn: psycopg.Connection[Any], table: str) -> int:
    """Rows read from ``table`` by this connection's backend and every other that flushed:
    heap rows of sequential scans and index entries of index scans."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT coalesce(t.seq_tup_read, 0) + coalesce(sum(i.idx_tup_read), 0)"
        " FROM pg_stat_user_tables t LEFT JOIN pg_stat_user_indexes i USING (relid)"
        " WHERE t.relname = %s AND t.schemaname = current_schema()"
        " GROUP BY t.seq_tup_read",
        (table,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _enqueue(conn: psycopg.Connection[Any], sql: str, key: str, *aliases: str) -> list[Any]:
    item = {
        "agent": "a",
        "trigger_kind": "webhook",
        "trigger_detail": {"receiptId": key},
        "dedupe_key": key,
        "dedupe_aliases": list(aliases),
    }
    params = {"items": json.dumps([item]), "overflow": "drop_oldest", "now": datetime.now(UTC)}
    with conn.cursor() as cur:
        cur.execute(sql, params, prepare=True)
        return [(row[1], row[2], row[9]) for row in cur.fetchall()]  # outcome, id, dedupe_key


async def _store_with_agent(url: str) -> None:
    async with await open_store(url) as store:
        await store.sync_project(
            [AgentSpec("a", 1, 1_000_000)], scale_cap=None, max_attempts=3, max_reruns=0
        )


async def test_an_enqueue_reads_its_keys_not_the_queue(store_url: str) -> None:
    await _store_with_agent(store_url)
    sql = load_sql_files("postgresql").queries["enqueue_items"]
    with psycopg.connect(store_url, autocommit=True) as conn:
        # Plans made while the queue is empty, then cached (generic after five runs).
        for n in range(8):
            assert _enqueue(conn, sql, f"early-{n}")[0][0] == "queued"
        conn.execute(
            "INSERT INTO corral_queue (agent, trigger_kind, state, enqueued_at, max_attempts,"
            " dedupe_key) SELECT 'a', 'webhook', 'queued', now(), 3, 'old-' || g"
            " FROM generate_series(1, %s) g",
            (FILLED,),
        )
        before = _rows_read(conn, "corral_queue")
        outcomes = [_enqueue(conn, sql, f"new-{n}") for n in range(10)]
        duplicate = _enqueue(conn, sql, "old-17")
        by_alias = _enqueue(conn, sql, "renamed-5", "old-900", "old-5")
        read = _rows_read(conn, "corral_queue") - before
    assert [o[0][0] for o in outcomes] == ["queued"] * 10
    assert [o[0][2] for o in outcomes] == [f"new-{n}" for n in range(10)]
    assert duplicate[0][0] == "duplicate" and duplicate[0][2] == "old-17"
    # Under any of its keys, the oldest item holding one of them.
    assert by_alias[0][0] == "duplicate" and by_alias[0][2] == "old-5"
    # 12 enqueues: before 0023 each read the whole queue (~36,000 rows in all).
    assert read <= 12 * PER_CALL, f"12 enqueues read {read} rows of corral_queue"


async def test_a_batch_of_deliveries_looks_up_its_ids_not_every_receipt(store_url: str) -> None:
    await _store_with_agent(store_url)
    sql = load_sql_files("postgresql").queries["find_receipt_deliveries"]

    def lookup(conn: psycopg.Connection[Any], ids: list[str]) -> list[Any]:
        params = {"sources": ["gh"] * len(ids), "delivery_ids": ids}
        with conn.cursor() as cur:
            cur.execute(sql, params, prepare=True)
            return sorted(tuple(row) for row in cur.fetchall())

    with psycopg.connect(store_url, autocommit=True) as conn:
        for n in range(8):
            assert lookup(conn, [f"early-{n}", f"early-{n}-b"]) == []
        conn.execute(
            "INSERT INTO corral_webhook_receipts (id, source, event, delivery_id, received_at,"
            " headers, body, body_size, body_truncated, verified, outcome, results)"
            " SELECT 'wh-' || g, 'gh', 'issues', 'd-' || g, now(), '{}', '\\x', 0, false, true,"
            " CASE WHEN g %% 2 = 0 THEN 'accepted' ELSE 'refused' END, '[]'"
            " FROM generate_series(1, %s) g",
            (FILLED,),
        )
        before = _rows_read(conn, "corral_webhook_receipts")
        found = [lookup(conn, [f"d-{2 * n}", f"d-{2 * n + 1}", f"new-{n}"]) for n in range(1, 11)]
        read = _rows_read(conn, "corral_webhook_receipts") - before
    # Only accepted (or ping) receipts take an id; refused ones do not.
    assert found == [[("gh", f"d-{2 * n}", f"wh-{2 * n}")] for n in range(1, 11)]
    # 10 batches of 3 ids: before, each batch read every receipt's index entry (~30,000).
    assert read <= 30 * PER_CALL, f"10 lookups read {read} rows of corral_webhook_receipts"
