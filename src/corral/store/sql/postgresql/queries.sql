-- Named queries for PostgreSQL. Each block starts with "-- name: <name>"; parameters are
-- %(name)s (psycopg). Tables are unqualified: they live in the search_path's first schema.

-- name: lock_migrations
-- One migrator per schema at a time; released when the transaction ends.
SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.corral_migrations'))

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS corral_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL
)

-- name: migrations_table_exists
SELECT to_regclass('corral_migrations') IS NOT NULL AS present

-- name: applied_migrations
SELECT version, name, applied_at FROM corral_migrations ORDER BY version

-- name: record_migration
INSERT INTO corral_migrations (version, name, applied_at)
VALUES (%(version)s, %(name)s, %(applied_at)s)

-- name: create_run
INSERT INTO corral_runs (id, agent, trigger_kind, trigger_detail, prompt, state,
                         parent_run_id, created_at)
VALUES (%(id)s, %(agent)s, %(trigger_kind)s, %(trigger_detail)s, %(prompt)s, %(state)s,
        %(parent_run_id)s, %(created_at)s)
RETURNING *

-- name: get_run
SELECT * FROM corral_runs WHERE id = %(id)s

-- name: mark_run_running
UPDATE corral_runs
SET state = 'running', started_at = %(started_at)s, pid = %(pid)s, host = %(host)s
WHERE id = %(id)s AND state = 'starting'
RETURNING *

-- name: finish_run
UPDATE corral_runs
SET state = %(state)s, exit_code = %(exit_code)s, error = %(error)s, ended_at = %(ended_at)s
WHERE id = %(id)s AND state IN ('starting', 'running')
RETURNING *

-- name: finish_unqueued_run
-- finish_run for a run outside the queue; a claimed run ends with finalize.
UPDATE corral_runs
SET state = %(state)s, exit_code = %(exit_code)s, error = %(error)s, ended_at = %(ended_at)s
WHERE id = %(id)s AND state IN ('starting', 'running') AND item_id IS NULL
RETURNING *

-- name: set_run_status
UPDATE corral_runs SET status_text = %(status_text)s WHERE id = %(id)s

-- name: list_runs
SELECT * FROM corral_runs
WHERE state = ANY(%(states)s) AND created_at >= %(since)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: list_agent_runs
SELECT * FROM corral_runs
WHERE agent = %(agent)s AND state = ANY(%(states)s) AND created_at >= %(since)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: list_live_runs
-- list_runs for live states only: the literal IN lets the planner prove the partial
-- index corral_runs_live's WHERE (a parameter array never does in a generic plan).
SELECT * FROM corral_runs
WHERE state IN ('queued', 'starting', 'running')
  AND state = ANY(%(states)s) AND created_at >= %(since)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: count_runs
SELECT count(*) AS n FROM corral_runs

-- name: count_agent_runs
SELECT count(*) AS n FROM corral_runs WHERE agent = %(agent)s

-- name: prune_runs
-- One batch of retention: at most batch runs that ended before older_than, oldest first.
-- = ANY(ARRAY(…)): the ids first, then each by its key (IN (…) hash-joins a
-- scan of the whole table).
DELETE FROM corral_runs
WHERE id = ANY(ARRAY(SELECT id FROM corral_runs
             WHERE ended_at IS NOT NULL AND ended_at < %(older_than)s
             ORDER BY ended_at LIMIT %(batch)s))

-- name: prune_items
-- One batch of retention: at most batch finished items (done, dropped, rejected, failed)
-- that finished before older_than, oldest first.
-- = ANY(ARRAY(…)): the ids first, then each by its key (IN (…) hash-joins a
-- scan of the whole table).
DELETE FROM corral_queue
WHERE id = ANY(ARRAY(SELECT id FROM corral_queue
             WHERE state IN ('done', 'dropped', 'rejected', 'failed')
               AND finished_at < %(older_than)s
             ORDER BY finished_at LIMIT %(batch)s))

-- name: lock_project
-- The project row, locked first by every transaction that changes the queue or its
-- claims: they run one at a time, so counting active claims inside them is race-free.
SELECT * FROM corral_project WHERE id = 1 FOR UPDATE

-- name: get_project
SELECT * FROM corral_project WHERE id = 1

-- name: update_project
UPDATE corral_project
SET scale_cap = %(scale_cap)s, max_attempts = %(max_attempts)s, max_reruns = %(max_reruns)s,
    daily_cost_cap = %(daily_cost_cap)s, updated_at = %(now)s
WHERE id = 1

-- name: set_project_paused
UPDATE corral_project SET paused = %(paused)s, updated_at = %(now)s WHERE id = 1

-- name: next_fences
-- Reserve %(n)s fencing tokens; they are (fence_counter - %(n)s, fence_counter].
UPDATE corral_project SET fence_counter = fence_counter + %(n)s WHERE id = 1
RETURNING fence_counter

-- name: upsert_agent
INSERT INTO corral_agents
    (agent, scale, queue_size, daily_cost_cap, paused, enabled, present, updated_at)
VALUES (%(agent)s, %(scale)s, %(queue_size)s, %(daily_cost_cap)s, false, true, true, %(now)s)
ON CONFLICT (agent) DO UPDATE
SET scale = excluded.scale, queue_size = excluded.queue_size,
    daily_cost_cap = excluded.daily_cost_cap, present = true, updated_at = excluded.updated_at

-- name: mark_absent_agents
UPDATE corral_agents SET present = false, updated_at = %(now)s
WHERE present AND agent <> ALL(%(agents)s)

-- name: get_agent
SELECT * FROM corral_agents WHERE agent = %(agent)s

-- name: set_agent_scale
UPDATE corral_agents SET scale = %(scale)s, updated_at = %(now)s WHERE agent = %(agent)s

-- name: set_agent_paused
UPDATE corral_agents SET paused = %(paused)s, updated_at = %(now)s WHERE agent = %(agent)s

-- name: set_agent_enabled
UPDATE corral_agents SET enabled = %(enabled)s, updated_at = %(now)s WHERE agent = %(agent)s

-- name: agent_states
SELECT a.agent, a.scale, a.queue_size, a.paused, a.enabled, a.present, a.daily_cost_cap,
       (SELECT count(*) FROM corral_queue q
        WHERE q.agent = a.agent AND q.state = 'queued') AS queued,
       (SELECT count(*) FROM corral_queue q
        WHERE q.agent = a.agent AND q.state = 'claimed') AS active
FROM corral_agents a
ORDER BY a.agent

-- name: agent_state
SELECT a.agent, a.scale, a.queue_size, a.paused, a.enabled, a.present, a.daily_cost_cap,
       (SELECT count(*) FROM corral_queue q
        WHERE q.agent = a.agent AND q.state = 'queued') AS queued,
       (SELECT count(*) FROM corral_queue q
        WHERE q.agent = a.agent AND q.state = 'claimed') AS active
FROM corral_agents a
WHERE a.agent = %(agent)s

-- name: find_dedupe
SELECT * FROM corral_queue WHERE dedupe_key = %(dedupe_key)s

-- name: find_dedupe_any
-- The item stored under any of :keys (a key and its aliases), oldest first.
SELECT * FROM corral_queue WHERE dedupe_key = ANY(%(keys)s)
ORDER BY id LIMIT 1

-- name: count_queued
-- The items that count against the queue bound: queued and never tried. An item given
-- back after a lost lease (attempts > 0) is outside the bound and never dropped for newer.
SELECT count(*) AS n FROM corral_queue
WHERE agent = %(agent)s AND state = 'queued' AND attempts = 0

-- name: drop_oldest
UPDATE corral_queue
SET state = 'dropped', reason = %(reason)s, finished_at = %(now)s
WHERE id IN (SELECT id FROM corral_queue
             WHERE agent = %(agent)s AND state = 'queued' AND attempts = 0
             ORDER BY id LIMIT %(n)s)
RETURNING *

-- name: insert_item
INSERT INTO corral_queue (agent, trigger_kind, trigger_detail, prompt, parent_run_id,
                          rerun_count, dedupe_key, state, reason, enqueued_at,
                          finished_at, max_attempts)
VALUES (%(agent)s, %(trigger_kind)s, %(trigger_detail)s, %(prompt)s, %(parent_run_id)s,
        %(rerun_count)s, %(dedupe_key)s, %(state)s, %(reason)s, %(now)s,
        %(finished_at)s, %(max_attempts)s)
RETURNING *

-- name: count_active
SELECT count(*) AS n FROM corral_queue WHERE state = 'claimed'

-- name: claimable
-- Oldest queued items first, per agent at most (scale - active claims of the agent),
-- across agents in id (FIFO) order; the caller passes the project's free slots as limit.
WITH active AS (
    SELECT agent, count(*) AS n FROM corral_queue WHERE state = 'claimed' GROUP BY agent
),
ranked AS (
    SELECT q.id, q.agent, q.lease_owner, q.lease_expires_at,
           row_number() OVER (PARTITION BY q.agent ORDER BY q.id) AS position,
           a.scale - coalesce(active.n, 0) AS free
    FROM corral_queue q
    JOIN corral_agents a ON a.agent = q.agent
    LEFT JOIN active ON active.agent = q.agent
    WHERE q.state = 'queued' AND a.present AND a.enabled AND NOT a.paused
)
-- An item reserved for a `corral run` in the foreground (a queued item with an unexpired
-- lease) keeps its place in line, but only its owner may claim it.
SELECT id, agent FROM ranked
WHERE position <= free AND (lease_owner IS NULL OR lease_expires_at < %(now)s)
ORDER BY id LIMIT %(limit)s

-- name: claimable_item
-- One given item, if its agent may take it now (FIFO order aside: it was asked for).
SELECT q.id, q.agent
FROM corral_queue q
JOIN corral_agents a ON a.agent = q.agent
WHERE q.id = %(item_id)s AND q.state = 'queued'
  AND (q.lease_owner IS NULL OR q.lease_owner = %(owner)s OR q.lease_expires_at < %(now)s)
  AND a.present AND a.enabled AND NOT a.paused
  AND a.scale > (SELECT count(*) FROM corral_queue c
                 WHERE c.agent = q.agent AND c.state = 'claimed')

-- name: insert_claim_run
INSERT INTO corral_runs (id, agent, trigger_kind, trigger_detail, prompt, state,
                         parent_run_id, created_at, item_id, fence, attempt, owner)
SELECT %(run_id)s, agent, trigger_kind, trigger_detail, prompt, 'starting',
       parent_run_id, %(now)s, id, %(fence)s, attempts + 1, %(owner)s
FROM corral_queue WHERE id = %(item_id)s AND state = 'queued'
RETURNING *

-- name: claim_item
UPDATE corral_queue
SET state = 'claimed', claimed_at = %(now)s, attempts = attempts + 1, lease_owner = %(owner)s,
    lease_expires_at = %(expires_at)s, fence = %(fence)s, run_id = %(run_id)s
WHERE id = %(item_id)s AND state = 'queued'
RETURNING *

-- name: renew_leases
UPDATE corral_queue SET lease_expires_at = %(expires_at)s
WHERE state = 'claimed' AND lease_owner = %(owner)s

-- name: renew_run_leases
UPDATE corral_queue SET lease_expires_at = %(expires_at)s
WHERE state = 'claimed' AND lease_owner = %(owner)s
  AND run_id = ANY(%(run_ids)s)

-- name: reserve_item
-- A queued item only ``owner`` may claim until ``expires_at`` (`corral run` in the
-- foreground); claiming it, or a requeue, replaces the reservation.
UPDATE corral_queue SET lease_owner = %(owner)s, lease_expires_at = %(expires_at)s
WHERE id = %(id)s AND state = 'queued'
RETURNING *

-- name: release_item
-- A run interrupted by a shutdown: its item goes back to the queue in its old place
-- (its id). The attempt counts, as a lost one does, so the item stays outside the queue
-- bound and is never dropped to make room.
UPDATE corral_queue
SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(item_id)s AND state = 'claimed' AND fence = %(fence)s
RETURNING *

-- name: heartbeat_scheduler
UPDATE corral_schedulers SET heartbeat_at = %(now)s WHERE id = %(id)s

-- name: finish_item
UPDATE corral_queue
SET state = 'done', finished_at = %(now)s, lease_expires_at = NULL
WHERE id = %(item_id)s AND state = 'claimed' AND fence = %(fence)s
RETURNING *

-- name: get_item
SELECT * FROM corral_queue WHERE id = %(id)s

-- name: lapsed_items
-- FOR UPDATE: a finalize of the same item waits, then finds it taken back (StaleFence).
SELECT * FROM corral_queue
WHERE state = 'claimed' AND lease_expires_at < %(now)s
ORDER BY id
FOR UPDATE

-- name: owner_items
SELECT * FROM corral_queue
WHERE state = 'claimed' AND lease_owner = %(owner)s
ORDER BY id
FOR UPDATE

-- name: requeue_item
UPDATE corral_queue
SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(id)s AND state = 'claimed'
RETURNING *

-- name: fail_item
UPDATE corral_queue
SET state = 'failed', reason = %(reason)s, finished_at = %(now)s, lease_expires_at = NULL
WHERE id = %(id)s AND state = 'claimed'
RETURNING *

-- name: request_rerun
UPDATE corral_runs SET rerun_requested = true
WHERE id = %(id)s AND state IN ('queued', 'starting', 'running')
RETURNING *

-- name: request_kill
UPDATE corral_runs SET kill_requested_at = coalesce(kill_requested_at, %(now)s)
WHERE id = %(id)s AND state IN ('queued', 'starting', 'running')
RETURNING *

-- name: kill_requests
SELECT * FROM corral_runs
WHERE owner = %(owner)s AND kill_requested_at IS NOT NULL
  AND state IN ('queued', 'starting', 'running')
ORDER BY created_at, id

-- name: list_items
SELECT * FROM corral_queue
WHERE state = ANY(%(states)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: list_open_items
-- list_items for open states (queued, claimed) only: newest first along corral_queue_open.
SELECT * FROM corral_queue
WHERE state IN ('queued', 'claimed') AND state = ANY(%(states)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: list_set_aside_items
-- list_items for set-aside states (dropped, rejected) only: the set-aside rows alone.
SELECT * FROM corral_queue
WHERE state IN ('dropped', 'rejected') AND state = ANY(%(states)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: list_agent_items
SELECT * FROM corral_queue
WHERE agent = %(agent)s AND state = ANY(%(states)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: register_scheduler
INSERT INTO corral_schedulers (id, host, pid, started_at, heartbeat_at, state, gateway_url)
VALUES (%(id)s, %(host)s, %(pid)s, %(now)s, %(now)s, 'running', %(gateway_url)s)
RETURNING *

-- name: set_scheduler_state
UPDATE corral_schedulers SET state = %(state)s, heartbeat_at = %(now)s WHERE id = %(id)s

-- name: list_schedulers
SELECT * FROM corral_schedulers ORDER BY started_at, id

-- name: list_live_schedulers
SELECT * FROM corral_schedulers
WHERE state IN ('running', 'draining') AND heartbeat_at >= %(since)s
ORDER BY started_at, id

-- name: lock_key
-- Serialise the takers of one lock key (not the project lock: keys do not contend with
-- one another). Tokens are then drawn in grant order, and acquired_at is read after the
-- previous holder's release committed. A hash collision only serialises two keys.
SELECT pg_advisory_xact_lock(hashtext('corral_locks'),
                             hashtext(current_schema() || ':' || %(key)s))

-- name: live_run_for_lock
-- FOR SHARE: a transaction ending the run (which releases its locks) waits for this one,
-- or this one sees the run ended.
SELECT id, state FROM corral_runs WHERE id = %(run_id)s FOR SHARE

-- name: next_lock_token
SELECT nextval('corral_lock_tokens') AS token

-- name: acquire_lock
-- Free -> inserted; expired or held by the same run -> updated (the same run keeps its
-- token and acquired_at); held unexpired by another run -> no row returned.
INSERT INTO corral_locks (key, run_id, token, acquired_at, expires_at)
VALUES (%(key)s, %(run_id)s, %(token)s, %(now)s, %(expires_at)s)
ON CONFLICT (key) DO UPDATE
SET token = CASE WHEN corral_locks.run_id = excluded.run_id
                 THEN corral_locks.token ELSE excluded.token END,
    acquired_at = CASE WHEN corral_locks.run_id = excluded.run_id
                       THEN corral_locks.acquired_at ELSE excluded.acquired_at END,
    run_id = excluded.run_id,
    expires_at = excluded.expires_at
WHERE corral_locks.expires_at <= excluded.acquired_at
   OR corral_locks.run_id = excluded.run_id
RETURNING *

-- name: lock_holder
SELECT * FROM corral_locks WHERE key = %(key)s

-- name: release_lock
DELETE FROM corral_locks WHERE key = %(key)s AND run_id = %(run_id)s

-- name: heartbeat_lock
UPDATE corral_locks SET expires_at = %(expires_at)s
WHERE key = %(key)s AND run_id = %(run_id)s
RETURNING expires_at

-- name: list_locks
SELECT l.key, l.run_id, r.agent, l.token, l.acquired_at, l.expires_at
FROM corral_locks l JOIN corral_runs r ON r.id = l.run_id
ORDER BY l.key

-- name: get_lock
SELECT l.key, l.run_id, r.agent, l.token, l.acquired_at, l.expires_at
FROM corral_locks l JOIN corral_runs r ON r.id = l.run_id
WHERE l.key = %(key)s

-- name: delete_lock
DELETE FROM corral_locks WHERE key = %(key)s AND token = %(token)s

-- name: release_run_locks
-- Every lock of a run that ended, released; the keys come back so waiters can be served.
DELETE FROM corral_locks WHERE run_id = %(run_id)s
RETURNING key

-- name: release_lock_returning
DELETE FROM corral_locks WHERE key = %(key)s AND run_id = %(run_id)s
RETURNING key

-- name: head_waiter
-- The first live waiter for a key whose wait has not expired: the next holder.
SELECT w.* FROM corral_lock_waits w JOIN corral_runs r ON r.id = w.run_id
WHERE w.key = %(key)s AND w.deadline > %(now)s AND r.state IN ('starting', 'running')
ORDER BY w.id
LIMIT 1

-- name: hand_over_lock
INSERT INTO corral_locks (key, run_id, token, acquired_at, expires_at)
VALUES (%(key)s, %(run_id)s, %(token)s, %(now)s, %(expires_at)s)
ON CONFLICT (key) DO UPDATE
SET run_id = excluded.run_id, token = excluded.token,
    acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
RETURNING *

-- name: get_wait
SELECT * FROM corral_lock_waits WHERE key = %(key)s AND run_id = %(run_id)s

-- name: insert_wait
INSERT INTO corral_lock_waits (key, run_id, since, deadline, ttl_seconds)
VALUES (%(key)s, %(run_id)s, %(now)s, %(deadline)s, %(ttl_seconds)s)
RETURNING *

-- name: delete_wait
DELETE FROM corral_lock_waits WHERE key = %(key)s AND run_id = %(run_id)s

-- name: delete_run_waits
DELETE FROM corral_lock_waits WHERE run_id = %(run_id)s

-- name: list_waits
SELECT * FROM corral_lock_waits WHERE deadline > %(now)s ORDER BY key, id

-- name: lock_wait_edges
-- The lock half of the wait-for graph: each live waiter waits for the key's holder,
-- unless that lock expired (the waiter takes it at its next step).
SELECT w.run_id AS waiter, w.key AS via, l.run_id AS holder
FROM corral_lock_waits w
JOIN corral_locks l ON l.key = w.key
JOIN corral_runs r ON r.id = w.run_id
WHERE w.deadline > %(now)s AND r.state IN ('starting', 'running') AND l.run_id <> w.run_id
  AND l.expires_at > %(now)s

-- name: call_wait_edges
-- The call half: a caller in al-subagent-wait waits for the run answering its call.
SELECT caller_run_id AS waiter, id AS via, callee_run_id AS holder
FROM corral_calls
WHERE waiting_since IS NOT NULL AND state IN ('pending', 'running')
  AND callee_run_id IS NOT NULL

-- name: lock_wait_graph
-- Serialise cycle checks with one another, so two runs closing one cycle at the same
-- time cannot both miss it: the second reads the first's committed edge.
SELECT pg_advisory_xact_lock(hashtext('corral_wait_graph'), hashtext(current_schema()))

-- name: upsert_want
-- A refused try-lock: the run wants the key until %(expires_at)s. One want per run (its
-- latest refusal); a refusal for the same key keeps its since.
INSERT INTO corral_lock_wants (run_id, key, since, expires_at)
VALUES (%(run_id)s, %(key)s, %(now)s, %(expires_at)s)
ON CONFLICT (run_id) DO UPDATE
SET since = CASE WHEN corral_lock_wants.key = excluded.key
                  AND corral_lock_wants.expires_at > excluded.since
                 THEN corral_lock_wants.since ELSE excluded.since END,
    key = excluded.key,
    expires_at = excluded.expires_at

-- name: delete_run_wants
DELETE FROM corral_lock_wants WHERE run_id = %(run_id)s

-- name: list_wants
SELECT * FROM corral_lock_wants WHERE expires_at > %(now)s ORDER BY key, since, run_id

-- name: lock_want_edges
-- The try-lock half of the wait-for graph: a live run whose unexpired want names a key
-- another run holds (unexpired) waits for that run.
SELECT w.run_id AS waiter, w.key AS via, l.run_id AS holder
FROM corral_lock_wants w
JOIN corral_locks l ON l.key = w.key
JOIN corral_runs r ON r.id = w.run_id
WHERE w.expires_at > %(now)s AND r.state IN ('starting', 'running') AND l.run_id <> w.run_id
  AND l.expires_at > %(now)s

-- name: clear_run_call_waits
UPDATE corral_calls SET waiting_since = NULL
WHERE caller_run_id = %(run_id)s AND waiting_since IS NOT NULL

-- name: insert_call
INSERT INTO corral_calls (id, caller_run_id, caller_agent, target_agent, depth, context,
                          item_id, state, created_at)
VALUES (%(id)s, %(caller_run_id)s, %(caller_agent)s, %(target_agent)s, %(depth)s, %(context)s,
        %(item_id)s, 'pending', %(now)s)
RETURNING *

-- name: get_call
SELECT * FROM corral_calls WHERE id = %(id)s

-- name: list_calls
SELECT * FROM corral_calls ORDER BY created_at DESC, id DESC LIMIT %(limit)s

-- name: depth_of_run
-- The depth of the call a run answers (none: the run was not called).
SELECT depth FROM corral_calls WHERE callee_run_id = %(run_id)s

-- name: start_call
UPDATE corral_calls SET state = 'running', callee_run_id = %(run_id)s
WHERE item_id = %(item_id)s AND state IN ('pending', 'running')

-- name: answer_call
UPDATE corral_calls
SET state = %(state)s, return_value = %(return_value)s, error = %(error)s, ended_at = %(now)s,
    waiting_since = NULL
WHERE callee_run_id = %(run_id)s AND state IN ('pending', 'running')
RETURNING *

-- name: requeue_call
UPDATE corral_calls SET state = 'pending', callee_run_id = NULL
WHERE item_id = %(item_id)s AND state IN ('pending', 'running')

-- name: fail_item_calls
UPDATE corral_calls
SET state = 'error', error = %(error)s, ended_at = %(now)s, waiting_since = NULL
WHERE item_id = %(item_id)s AND state IN ('pending', 'running')
RETURNING *

-- name: set_call_waiting
UPDATE corral_calls SET waiting_since = %(since)s
WHERE id = %(id)s AND caller_run_id = %(caller_run_id)s

-- name: set_run_secret
UPDATE corral_runs SET secret_hash = %(secret_hash)s
WHERE id = %(id)s AND state IN ('starting', 'running')
RETURNING *

-- name: run_by_secret
SELECT * FROM corral_runs WHERE secret_hash = %(secret_hash)s

-- name: set_run_status_live
UPDATE corral_runs SET status_text = %(status_text)s, status_at = %(now)s
WHERE id = %(id)s AND state IN ('starting', 'running')
RETURNING *

-- name: set_return_value
UPDATE corral_runs SET return_value = %(return_value)s
WHERE id = %(id)s AND state IN ('starting', 'running')
RETURNING *

-- name: request_exit
UPDATE corral_runs SET exit_requested = %(code)s
WHERE id = %(id)s AND state IN ('starting', 'running')
RETURNING *

-- name: insert_audit
INSERT INTO corral_audit (at, actor, action, subject, detail)
VALUES (%(now)s, %(actor)s, %(action)s, %(subject)s, %(detail)s)
RETURNING *

-- name: list_audit
SELECT * FROM corral_audit ORDER BY id DESC LIMIT %(limit)s

-- name: record_usage
-- A built-in run's totals so far (absolute, so a repeated write changes nothing); the
-- budget that stopped it, once one did.
UPDATE corral_runs
SET input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s,
    cache_read_tokens = %(cache_read_tokens)s, cache_write_tokens = %(cache_write_tokens)s,
    cost_usd = %(cost_usd)s, budget = COALESCE(%(budget)s, budget)
WHERE id = %(id)s
RETURNING *

-- name: spend_since
-- Dollars spent by runs created at or after :since (one agent's, or the project's).
SELECT COALESCE(sum(cost_usd), 0) AS cost FROM corral_runs
WHERE created_at >= %(since)s AND (%(agent)s::text IS NULL OR agent = %(agent)s::text)

-- name: usage_by_day
-- Runs, tokens and dollars per agent and UTC day, for runs created at or after :since.
SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, agent, count(*) AS runs, count(cost_usd) AS priced_runs,
       COALESCE(sum(input_tokens), 0) AS input_tokens,
       COALESCE(sum(output_tokens), 0) AS output_tokens,
       COALESCE(sum(cache_read_tokens), 0) AS cache_read_tokens,
       COALESCE(sum(cache_write_tokens), 0) AS cache_write_tokens,
       COALESCE(sum(cost_usd), 0) AS cost_usd
FROM corral_runs
WHERE created_at >= %(since)s AND (%(agent)s::text IS NULL OR agent = %(agent)s::text)
GROUP BY to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), agent
ORDER BY day DESC, agent

-- name: find_receipt_delivery
-- The receipt that took this delivery id for its source (accepted or ping), if any.
SELECT * FROM corral_webhook_receipts
WHERE source = %(source)s AND delivery_id = %(delivery_id)s AND replay_of IS NULL
  AND outcome IN ('accepted', 'ping')

-- name: insert_receipt
INSERT INTO corral_webhook_receipts
    (id, source, event, delivery_id, received_at, headers, body, body_size, body_truncated,
     verified, verification, outcome, error, results, replay_of, duplicate_of,
     repeat_key)
VALUES (%(id)s, %(source)s, %(event)s, %(delivery_id)s, %(received_at)s, %(headers)s, %(body)s,
        %(body_size)s, %(body_truncated)s, %(verified)s, %(verification)s, %(outcome)s,
        %(error)s, %(results)s, %(replay_of)s, %(duplicate_of)s,
        %(repeat_key)s)

-- name: get_receipt
SELECT * FROM corral_webhook_receipts WHERE id = %(id)s

-- name: list_receipts
-- Newest first; each filter applies only when its parameter is not NULL.
SELECT * FROM corral_webhook_receipts
WHERE (%(source)s::text IS NULL OR source = %(source)s::text)
  AND (%(outcome)s::text IS NULL OR outcome = %(outcome)s::text)
  AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s::timestamptz)
ORDER BY received_at DESC, id DESC
LIMIT %(limit)s

-- name: prune_receipts
-- Every receipt received before older_than; a stranger's (0009) before strangers_before.
DELETE FROM corral_webhook_receipts
WHERE received_at < %(older_than)s
   OR (repeat_key IS NOT NULL AND received_at < %(strangers_before)s)

-- name: prune_stranger_receipts
DELETE FROM corral_webhook_receipts
WHERE repeat_key IS NOT NULL AND received_at < %(strangers_before)s

-- name: recent_repeats
-- A stranger's receipts of one kind since a time: how many, and the newest.
SELECT count(*) AS n, max(received_at) AS newest FROM corral_webhook_receipts
WHERE repeat_key = %(repeat_key)s AND received_at >= %(since)s

-- name: count_repeat
-- Count one more delivery on the newest receipt of a kind (recent_repeats' newest).
UPDATE corral_webhook_receipts
SET repeats = repeats + 1, last_repeat_at = %(now)s
WHERE id = (
    SELECT id FROM corral_webhook_receipts
    WHERE repeat_key = %(repeat_key)s AND received_at >= %(since)s
    ORDER BY received_at DESC, id DESC
    LIMIT 1
)
RETURNING *

-- Operator tokens (0007) ------------------------------------------------------------------

-- name: insert_operator_token
-- Nothing when the name is taken (live or revoked) or the hash is.
INSERT INTO corral_operator_tokens (name, token_hash, created_at)
VALUES (%(name)s, %(token_hash)s, %(now)s)
ON CONFLICT DO NOTHING
RETURNING *

-- name: get_operator_token
SELECT * FROM corral_operator_tokens WHERE name = %(name)s

-- name: list_operator_tokens
SELECT * FROM corral_operator_tokens ORDER BY created_at, name

-- name: revoke_operator_token
UPDATE corral_operator_tokens SET revoked_at = %(now)s
WHERE name = %(name)s AND revoked_at IS NULL
RETURNING *

-- name: find_operator_token
SELECT * FROM corral_operator_tokens WHERE token_hash = %(token_hash)s

-- name: touch_operator_token
UPDATE corral_operator_tokens SET last_used_at = %(now)s WHERE name = %(name)s

-- name: count_live_operator_tokens
SELECT count(*) AS n FROM corral_operator_tokens WHERE revoked_at IS NULL

-- /metrics ------------------------------------------------------------------------------

-- name: metrics_runs_since
-- Runs that started or ended at or after since, with when their item was queued.
SELECT r.*, q.enqueued_at AS item_enqueued_at
FROM corral_runs r LEFT JOIN corral_queue q ON q.id = r.item_id
WHERE r.ended_at >= %(since)s OR r.started_at >= %(since)s

-- name: metrics_items_set_aside_since
SELECT * FROM corral_queue
WHERE state IN ('dropped', 'rejected') AND finished_at >= %(since)s

-- name: prune_request_keys
-- Idempotency keys past their time (see 0008); every keyed request prunes them first.
DELETE FROM corral_request_keys WHERE expires_at < %(now)s

-- name: find_request_key
SELECT * FROM corral_request_keys WHERE key = %(key)s

-- name: insert_request_key
INSERT INTO corral_request_keys
    (key, fingerprint, agent, item_id, dropped, created_at, expires_at)
VALUES (%(key)s, %(fingerprint)s, %(agent)s, %(item_id)s, %(dropped)s, %(now)s, %(expires_at)s)

-- name: bound_lock_waits
-- A request's transaction waits this long at most for a row lock (the project row, held
-- by another writer), then fails with lock_not_available instead of committing late.
SELECT set_config('lock_timeout', %(timeout)s, true) AS bounded
