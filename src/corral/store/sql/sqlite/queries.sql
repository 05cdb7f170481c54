-- Named queries for SQLite. Each block starts with "-- name: <name>"; parameters are :name.
-- Timestamps arrive already encoded (ISO-8601 UTC text); JSON arrives as text.
-- Queries both dialects share are in ../common/queries.sql; this file holds the ones that differ.

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS corral_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
)

-- name: migrations_table_exists
SELECT count(*) > 0 AS present
FROM sqlite_master
WHERE type = 'table' AND name = 'corral_migrations'

-- name: list_runs
SELECT * FROM corral_runs
WHERE state IN (SELECT value FROM json_each(:states)) AND created_at >= :since
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: list_agent_runs
SELECT * FROM corral_runs
WHERE agent = :agent AND state IN (SELECT value FROM json_each(:states)) AND created_at >= :since
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: list_live_runs
-- list_runs for live states only: the literal IN lets the planner use the partial index
-- corral_runs_live (a parameter list never matches a partial index's WHERE).
SELECT * FROM corral_runs INDEXED BY corral_runs_live
WHERE state IN ('queued', 'starting', 'running')
  AND state IN (SELECT value FROM json_each(:states)) AND created_at >= :since
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: page_runs
-- The runs list (dashboard, GET /control/runs, `corral runs`): newest first, a page after
-- the keyset cursor (before_at, before_id), filtered. The created_at range is what the
-- index corral_runs_created serves; everything else filters the rows it walks.
SELECT * FROM corral_runs
WHERE created_at >= :since AND created_at <= :until
  AND (created_at < :before_at OR (created_at = :before_at AND id < :before_id))
  AND state IN (SELECT value FROM json_each(:states))
  AND trigger_kind IN (SELECT value FROM json_each(:triggers))
  AND (:search = '' OR substr(id, 1, length(:search)) = :search
       OR instr(lower(status_text), :search) > 0
       OR instr(lower(trigger_detail), :search) > 0
       OR instr(lower(prompt), :search) > 0)
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: page_agent_runs
-- page_runs for one agent: the index corral_runs_agent_created (agent, created_at).
SELECT * FROM corral_runs
WHERE agent = :agent AND created_at >= :since AND created_at <= :until
  AND (created_at < :before_at OR (created_at = :before_at AND id < :before_id))
  AND state IN (SELECT value FROM json_each(:states))
  AND trigger_kind IN (SELECT value FROM json_each(:triggers))
  AND (:search = '' OR substr(id, 1, length(:search)) = :search
       OR instr(lower(status_text), :search) > 0
       OR instr(lower(trigger_detail), :search) > 0
       OR instr(lower(prompt), :search) > 0)
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: prune_runs
-- One batch of retention: at most :batch runs that ended before :older_than, oldest first.
DELETE FROM corral_runs
WHERE id IN (SELECT id FROM corral_runs
             WHERE ended_at IS NOT NULL AND ended_at < :older_than
             ORDER BY ended_at LIMIT :batch)

-- name: prune_items
-- One batch of retention: at most :batch finished items (done, dropped, rejected, failed)
-- that finished before :older_than, oldest first.
DELETE FROM corral_queue
WHERE id IN (SELECT id FROM corral_queue INDEXED BY corral_queue_finished
             WHERE state IN ('done', 'dropped', 'rejected', 'failed')
               AND finished_at < :older_than
             ORDER BY finished_at LIMIT :batch)

-- name: lock_project
-- The project row, read first by every transaction that changes the queue or its claims.
-- No lock clause: the transaction's BEGIN IMMEDIATE already excludes every other writer.
SELECT * FROM corral_project WHERE id = 1

-- name: next_fences
-- Reserve :n fencing tokens; they are (fence_counter - :n, fence_counter] (writers are
-- serialised, so the project row is no contended lock here).
UPDATE corral_project SET fence_counter = fence_counter + :n WHERE id = 1
RETURNING fence_counter

-- name: upsert_agent
INSERT INTO corral_agents
    (agent, scale, queue_size, daily_cost_cap, paused, enabled, present, updated_at,
     pool_size)
VALUES (:agent, :scale, :queue_size, :daily_cost_cap, 0, 1, 1, :now, :pool_min)
ON CONFLICT (agent) DO UPDATE
SET scale = excluded.scale, queue_size = excluded.queue_size,
    daily_cost_cap = excluded.daily_cost_cap, present = 1, updated_at = excluded.updated_at,
    pool_size = CASE WHEN excluded.pool_size IS NULL THEN NULL
                     ELSE min(max(coalesce(corral_agents.pool_size, excluded.pool_size),
                                  excluded.pool_size), excluded.scale) END

-- name: mark_absent_agents
UPDATE corral_agents SET present = 0, updated_at = :now
WHERE present = 1 AND agent NOT IN (SELECT value FROM json_each(:agents))

-- name: lock_agent_state
-- agent_state in a writing transaction (BEGIN IMMEDIATE already excludes every other
-- writer: no lock clause). bound: the never-tried queued items, the queue bound's count.
SELECT a.agent, a.scale, a.queue_size, a.paused, a.enabled, a.present, a.daily_cost_cap,
       a.queued + a.requeued AS queued, a.running AS active, a.queued AS bound
FROM corral_agents a
WHERE a.agent = :agent

-- name: find_dedupe_any
-- The item stored under any of :keys (a key and its aliases), oldest first.
SELECT * FROM corral_queue WHERE dedupe_key IN (SELECT value FROM json_each(:keys))
ORDER BY id LIMIT 1

-- name: claimable
-- Up to :limit items to claim, fair across agents: round robin, each agent's oldest
-- first, agents in the order of their oldest waiting item (so one agent's burst of a
-- thousand holds no other agent's item back more than one batch). Per agent at most
-- (the pool size the autoscaler decided, 0022, lowers scale: the least of the two)
-- scale - running (the counters, 0012): only agents with work and a free slot are read.
-- An item reserved for a `corral run` in the foreground (a queued item with an unexpired
-- lease) keeps its place in line, but only its owner may claim it.
WITH candidates AS (
    SELECT a.agent, min(a.scale, coalesce(a.pool_size, a.scale)) - a.running AS free
    FROM corral_agents a
    WHERE a.present = 1 AND a.enabled = 1 AND a.paused = 0
      AND a.running < min(a.scale, coalesce(a.pool_size, a.scale))
      AND a.queued + a.requeued > 0
      AND (:restricted = 0 OR a.agent IN (SELECT value FROM json_each(:agents)))
),
picked AS (
    SELECT q.id, q.agent, q.trigger_kind, q.lease_owner, q.lease_expires_at,
           row_number() OVER (PARTITION BY q.agent ORDER BY q.id) AS position, c.free
    FROM candidates c
    JOIN corral_queue q INDEXED BY corral_queue_queued
      ON q.agent = c.agent AND q.state = 'queued'
)
SELECT id, agent, trigger_kind FROM picked
WHERE position <= free AND (lease_owner IS NULL OR lease_expires_at < :now)
ORDER BY position, id
LIMIT :limit

-- name: claimable_item
-- One given item, if its agent may take it now (FIFO order aside: it was asked for).
-- Bounded by scale, not by the autoscaler's pool size (0022): a person asked for this
-- run in the foreground, and a pool of min 0 with no scheduler running would never take it.
SELECT q.id, q.agent, q.trigger_kind
FROM corral_queue q
JOIN corral_agents a ON a.agent = q.agent
WHERE q.id = :item_id AND q.state = 'queued'
  AND (q.lease_owner IS NULL OR q.lease_owner = :owner OR q.lease_expires_at < :now)
  AND a.present = 1 AND a.enabled = 1 AND a.paused = 0 AND a.running < a.scale

-- name: insert_claim_runs
-- The runs of a batch of claims, in one statement: plan is a JSON array of
-- {item_id, run_id, fence, secret_hash} (secret_hash may be null: set later).
WITH p AS (
    SELECT json_extract(value, '$.item_id') AS item_id,
           json_extract(value, '$.run_id') AS run_id,
           json_extract(value, '$.fence') AS fence,
           json_extract(value, '$.secret_hash') AS secret_hash
    FROM json_each(:plan)
)
INSERT INTO corral_runs (id, agent, trigger_kind, trigger_detail, prompt, state,
                         parent_run_id, created_at, item_id, fence, attempt, owner,
                         bundle, secret_hash)
SELECT p.run_id, q.agent, q.trigger_kind, q.trigger_detail, q.prompt, 'starting',
       q.parent_run_id, :now, q.id, p.fence, q.attempts + 1, :owner, :bundle, p.secret_hash
FROM p JOIN corral_queue q ON q.id = p.item_id AND q.state = 'queued'
WHERE true
RETURNING *

-- name: claim_items
-- The items of a batch of claims, in one statement (plan as insert_claim_runs).
WITH p AS (
    SELECT json_extract(value, '$.item_id') AS item_id,
           json_extract(value, '$.run_id') AS run_id,
           json_extract(value, '$.fence') AS fence
    FROM json_each(:plan)
)
UPDATE corral_queue
SET state = 'claimed', claimed_at = :now, attempts = attempts + 1, lease_owner = :owner,
    lease_expires_at = :expires_at, fence = p.fence, run_id = p.run_id
FROM p
WHERE corral_queue.id = p.item_id AND corral_queue.state = 'queued'
RETURNING *

-- name: start_claimed_calls
-- The calls whose items a batch just claimed now run as the claims' runs.
WITH p AS (
    SELECT json_extract(value, '$.item_id') AS item_id,
           json_extract(value, '$.run_id') AS run_id
    FROM json_each(:plan)
)
UPDATE corral_calls SET state = 'running', callee_run_id = p.run_id
FROM p
WHERE corral_calls.item_id = p.item_id AND corral_calls.state IN ('pending', 'running')

-- name: renew_run_leases
UPDATE corral_queue SET lease_expires_at = :expires_at
WHERE state = 'claimed' AND lease_owner = :owner
  AND run_id IN (SELECT value FROM json_each(:run_ids))

-- name: renew_runner_leases
-- See the PostgreSQL twin.
UPDATE corral_queue SET lease_expires_at = :expires_at
WHERE state = 'claimed' AND lease_owner = :owner AND lease_expires_at >= :now
  AND run_id IN (SELECT value FROM json_each(:run_ids))
  AND (run_id || ':' || fence) IN (SELECT value FROM json_each(:held))
RETURNING run_id,
    (SELECT r.kill_requested_at IS NOT NULL FROM corral_runs r
     WHERE r.id = corral_queue.run_id AND r.state IN ('queued', 'starting', 'running')) AS kill

-- name: lapsed_items
SELECT * FROM corral_queue INDEXED BY corral_queue_claimed
WHERE state = 'claimed' AND lease_expires_at < :now
ORDER BY id

-- name: claimed_for_runner
-- The runs a claim just made for a runner record it (plan as insert_claim_runs).
UPDATE corral_runs SET runner_id = :owner
WHERE id IN (SELECT json_extract(value, '$.run_id') FROM json_each(:plan))

-- name: owner_items
SELECT * FROM corral_queue INDEXED BY corral_queue_claimed
WHERE state = 'claimed' AND lease_owner = :owner
ORDER BY id

-- name: request_rerun
UPDATE corral_runs SET rerun_requested = 1
WHERE id = :id AND state IN ('queued', 'starting', 'running')
RETURNING *

-- name: list_items
SELECT * FROM corral_queue
WHERE state IN (SELECT value FROM json_each(:states))
ORDER BY id DESC
LIMIT :limit

-- name: list_open_items
-- list_items for open states (queued, claimed) only: newest first along corral_queue_open.
SELECT * FROM corral_queue INDEXED BY corral_queue_open
WHERE state IN ('queued', 'claimed') AND state IN (SELECT value FROM json_each(:states))
ORDER BY id DESC
LIMIT :limit

-- name: list_set_aside_items
-- list_items for set-aside states (dropped, rejected) only: the set-aside rows alone.
SELECT * FROM corral_queue INDEXED BY corral_queue_set_aside
WHERE state IN ('dropped', 'rejected') AND state IN (SELECT value FROM json_each(:states))
ORDER BY id DESC
LIMIT :limit

-- name: list_agent_items
SELECT * FROM corral_queue
WHERE agent = :agent AND state IN (SELECT value FROM json_each(:states))
ORDER BY id DESC
LIMIT :limit

-- name: lock_key
-- Serialise the takers of one lock key. Nothing to do: BEGIN IMMEDIATE already excludes
-- every other writer.
SELECT 1 AS locked

-- name: live_run_for_lock
SELECT id, state FROM corral_runs WHERE id = :run_id

-- name: next_lock_token
-- Lock tokens share the fence counter: strictly increasing across the whole store.
UPDATE corral_project SET fence_counter = fence_counter + 1 WHERE id = 1
RETURNING fence_counter AS token

-- name: lock_wait_graph
-- Serialise cycle checks with one another. Nothing to do: BEGIN IMMEDIATE already
-- excludes every other writer.
SELECT 1 AS locked

-- name: upsert_want
-- A refused try-lock: the run wants the key until :expires_at. One want per run (its
-- latest refusal); a refusal for the same key keeps its since.
INSERT INTO corral_lock_wants (run_id, key, since, expires_at)
VALUES (:run_id, :key, :now, :expires_at)
ON CONFLICT (run_id) DO UPDATE
SET since = CASE WHEN corral_lock_wants.key = excluded.key
                  AND corral_lock_wants.expires_at > excluded.since
                 THEN corral_lock_wants.since ELSE excluded.since END,
    key = excluded.key,
    expires_at = excluded.expires_at

-- name: lock_project_for_call
-- The project row locked as ``lock_project`` does, with what a call needs of its
-- caller (state, agent, the depth of the call it answers, if any): the first three
-- statements of ``create_call`` as one. caller_state is NULL for an unknown run.
-- No lock clause: BEGIN IMMEDIATE already excludes every other writer.
SELECT p.*, r.state AS caller_state, r.agent AS caller_agent,
    (SELECT c.depth FROM corral_calls c WHERE c.callee_run_id = r.id LIMIT 1)
        AS caller_depth
FROM corral_project p LEFT JOIN corral_runs r ON r.id = :run_id
WHERE p.id = 1

-- name: spend_since
-- Dollars spent by runs created at or after :since (one agent's, or the project's).
SELECT COALESCE(sum(cost_usd), 0) AS cost FROM corral_runs
WHERE created_at >= :since AND (:agent IS NULL OR agent = :agent)

-- name: spend_by_agent_since
-- Dollars spent per agent by runs created at or after :since (their sum: the project's).
-- (read by the creation index, as spend_since: grouping by the agent's own index would
-- read every run ever made)
SELECT agent, COALESCE(sum(cost_usd), 0) AS cost FROM corral_runs INDEXED BY corral_runs_created
WHERE created_at >= :since
GROUP BY agent

-- name: usage_by_day
-- Runs, tokens and dollars per agent and UTC day, for runs created at or after :since.
SELECT substr(created_at, 1, 10) AS day, agent, count(*) AS runs, count(cost_usd) AS priced_runs,
       COALESCE(sum(input_tokens), 0) AS input_tokens,
       COALESCE(sum(output_tokens), 0) AS output_tokens,
       COALESCE(sum(cache_read_tokens), 0) AS cache_read_tokens,
       COALESCE(sum(cache_write_tokens), 0) AS cache_write_tokens,
       COALESCE(sum(cost_usd), 0) AS cost_usd
FROM corral_runs
WHERE created_at >= :since AND (:agent IS NULL OR agent = :agent)
GROUP BY substr(created_at, 1, 10), agent
ORDER BY day DESC, agent

-- name: list_receipts
-- Newest first; each filter applies only when its parameter is not NULL.
SELECT * FROM corral_webhook_receipts
WHERE (:source IS NULL OR source = :source)
  AND (:outcome IS NULL OR outcome = :outcome)
  AND (:since IS NULL OR received_at >= :since)
ORDER BY received_at DESC, id DESC
LIMIT :limit

-- /metrics ------------------------------------------------------------------------------

-- name: bound_lock_waits
-- A request's transaction waits this long at most for a row lock (SQLite: the file's
-- write lock is taken at BEGIN IMMEDIATE, bounded by the busy timeout; nothing to do).
SELECT 1 AS bounded

-- name: runs_ended_by_hour
-- Runs ended at or after :since by UTC hour ('YYYY-MM-DDTHH'), agent and runner (NULL:
-- the control plane): the fleet page's throughput chart.
SELECT substr(ended_at, 1, 13) AS hour, agent, runner_id, count(*) AS ended
FROM corral_runs
WHERE ended_at >= :since AND ended_at IS NOT NULL
GROUP BY substr(ended_at, 1, 13), agent, runner_id

-- name: mark_runs_running
-- PostgreSQL's batch of marks (Store.mark_run_running), in SQLite's terms for parity of
-- the named queries: SQLite marks each run in a transaction of its own. :ids, :pids,
-- :hosts and :started are JSON arrays of one length; each run that is still starting
-- gets the values at its index.
UPDATE corral_runs
SET state = 'running',
    started_at = json_extract(:started, '$[' || m.key || ']'),
    pid = json_extract(:pids, '$[' || m.key || ']'),
    host = json_extract(:hosts, '$[' || m.key || ']')
FROM json_each(:ids) AS m
WHERE corral_runs.id = m.value AND corral_runs.state = 'starting'
RETURNING *

-- name: heartbeats_by_credential
-- PostgreSQL's batch of heartbeats, in SQLite's terms for parity of the named queries:
-- SQLite records each heartbeat alone. :hashes and :versions are JSON arrays of one
-- length; each known, unrevoked runner gets the version at its index (empty: unchanged).
UPDATE corral_runners
SET last_heartbeat_at = :now, offline_since = NULL,
    version = CASE WHEN json_extract(:versions, '$[' || h.key || ']') = '' THEN version
                   ELSE json_extract(:versions, '$[' || h.key || ']') END
FROM json_each(:hashes) AS h
WHERE corral_runners.credential_hash = h.value AND corral_runners.state <> 'revoked'
RETURNING *

-- ---------------------------------------------------------------------------------------
-- The task board (_tasks).

-- name: lock_task_graph
SELECT 1;

-- The best open task of priority :min_priority or more whose every requirement is done
-- and that has every label in :labels (a JSON list), in any project: taken in the same
-- statement (BEGIN IMMEDIATE already serialises writers).
-- name: claim_task
UPDATE corral_tasks
SET status = 'claimed', assignee = :claimer, run_id = :run_id, token = token + 1,
    claimed_at = :now, heartbeat_at = :now, expires_at = :expires_at,
    attempts = attempts + 1, result = NULL, updated_at = :now
WHERE status = 'open' AND (project, id) = (
    SELECT c.project, c.id FROM corral_tasks c INDEXED BY corral_tasks_open
    WHERE c.status = 'open' AND c.priority >= :min_priority
        AND NOT EXISTS (
            SELECT 1 FROM corral_task_edges e
            JOIN corral_tasks r ON r.project = e.project AND r.id = e.requires
            WHERE e.project = c.project AND e.task_id = c.id AND r.status <> 'done')
        AND NOT EXISTS (
            SELECT 1 FROM json_each(:labels) w
            WHERE w.value NOT IN (SELECT value FROM json_each(c.labels)))
    ORDER BY c.priority DESC, c.created_at, c.id, c.project
    LIMIT 1)
RETURNING *;

-- name: claim_project_task
UPDATE corral_tasks
SET status = 'claimed', assignee = :claimer, run_id = :run_id, token = token + 1,
    claimed_at = :now, heartbeat_at = :now, expires_at = :expires_at,
    attempts = attempts + 1, result = NULL, updated_at = :now
WHERE status = 'open' AND project = :project AND id = (
    SELECT c.id FROM corral_tasks c INDEXED BY corral_tasks_project_open
    WHERE c.status = 'open' AND c.project = :project AND c.priority >= :min_priority
        AND NOT EXISTS (
            SELECT 1 FROM corral_task_edges e
            JOIN corral_tasks r ON r.project = e.project AND r.id = e.requires
            WHERE e.project = c.project AND e.task_id = c.id AND r.status <> 'done')
        AND NOT EXISTS (
            SELECT 1 FROM json_each(:labels) w
            WHERE w.value NOT IN (SELECT value FROM json_each(c.labels)))
    ORDER BY c.priority DESC, c.created_at, c.id
    LIMIT 1)
RETURNING *;

-- The open tasks of :project of priority :min_priority or more whose every requirement
-- is done and that have every label in :labels (what claim_project_task would take),
-- counted up to :cap (the [[tasks]] trigger needs no more).
-- name: count_stream_tasks
SELECT count(*) AS n FROM (
    SELECT 1 FROM corral_tasks c INDEXED BY corral_tasks_project_open
    WHERE c.status = 'open' AND c.project = :project AND c.priority >= :min_priority
        AND NOT EXISTS (
            SELECT 1 FROM corral_task_edges e
            JOIN corral_tasks r ON r.project = e.project AND r.id = e.requires
            WHERE e.project = c.project AND e.task_id = c.id AND r.status <> 'done')
        AND NOT EXISTS (
            SELECT 1 FROM json_each(:labels) w
            WHERE w.value NOT IN (SELECT value FROM json_each(c.labels)))
    LIMIT :cap);

-- name: assign_canary
-- The runs just claimed that run the canary, while its rollout still runs (a rollout
-- ended a moment ago assigns nothing: new runs then run the baseline).
UPDATE corral_runs
SET bundle = (SELECT candidate FROM corral_rollouts WHERE id = :rollout AND state = 'running')
WHERE id IN (SELECT value FROM json_each(:ids))
  AND EXISTS (SELECT 1 FROM corral_rollouts WHERE id = :rollout AND state = 'running')
RETURNING id, bundle

-- name: lock_provider_bucket
-- (BEGIN IMMEDIATE already serialises writers.)
SELECT * FROM corral_provider_buckets WHERE bucket = :bucket
