-- Named queries for PostgreSQL. Each block starts with "-- name: <name>"; parameters are
-- %(name)s (psycopg). Tables are unqualified: they live in the search_path's first schema.
-- Queries both dialects share are in ../common/queries.sql; this file holds the ones that differ.

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

-- name: page_runs
-- The runs list (dashboard, GET /control/runs, `corral runs`): newest first, a page after
-- the keyset cursor (before_at, before_id), filtered. The created_at range is what the
-- index corral_runs_created serves; everything else filters the rows it walks.
SELECT * FROM corral_runs
WHERE created_at >= %(since)s AND created_at <= %(until)s
  AND (created_at < %(before_at)s OR (created_at = %(before_at)s AND id < %(before_id)s))
  AND state = ANY(%(states)s)
  AND trigger_kind = ANY(%(triggers)s)
  AND (%(search)s = '' OR substr(id, 1, length(%(search)s)) = %(search)s
       OR strpos(lower(status_text), %(search)s) > 0
       OR strpos(lower(trigger_detail::text), %(search)s) > 0
       OR strpos(lower(prompt), %(search)s) > 0)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: page_agent_runs
-- page_runs for one agent: the index corral_runs_agent_created (agent, created_at).
SELECT * FROM corral_runs
WHERE agent = %(agent)s AND created_at >= %(since)s AND created_at <= %(until)s
  AND (created_at < %(before_at)s OR (created_at = %(before_at)s AND id < %(before_id)s))
  AND state = ANY(%(states)s)
  AND trigger_kind = ANY(%(triggers)s)
  AND (%(search)s = '' OR substr(id, 1, length(%(search)s)) = %(search)s
       OR strpos(lower(status_text), %(search)s) > 0
       OR strpos(lower(trigger_detail::text), %(search)s) > 0
       OR strpos(lower(prompt), %(search)s) > 0)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

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

-- name: next_fences
-- %(n)s fencing tokens, one a row (column fence), from the sequence corral_fences
-- (0012): increasing without a row lock; not contiguous, other claims draw meanwhile.
SELECT nextval('corral_fences') AS fence FROM generate_series(1, %(n)s)

-- name: upsert_agent
INSERT INTO corral_agents
    (agent, scale, queue_size, daily_cost_cap, paused, enabled, present, updated_at,
     pool_size)
VALUES (%(agent)s, %(scale)s, %(queue_size)s, %(daily_cost_cap)s, false, true, true, %(now)s,
        %(pool_min)s::integer)
ON CONFLICT (agent) DO UPDATE
SET scale = excluded.scale, queue_size = excluded.queue_size,
    daily_cost_cap = excluded.daily_cost_cap, present = true, updated_at = excluded.updated_at,
    pool_size = CASE WHEN excluded.pool_size IS NULL THEN NULL
                     ELSE least(greatest(coalesce(corral_agents.pool_size, excluded.pool_size),
                                         excluded.pool_size), excluded.scale) END

-- name: mark_absent_agents
UPDATE corral_agents SET present = false, updated_at = %(now)s
WHERE present AND agent <> ALL(%(agents)s)

-- name: lock_agent_state
-- agent_state, locking the agent's row: intake and claims of one agent take turns on it
-- (not on the project row), so its counters cannot change before the transaction ends.
-- bound: the never-tried queued items, the count the queue bound applies to.
SELECT a.agent, a.scale, a.queue_size, a.paused, a.enabled, a.present, a.daily_cost_cap,
       a.queued + a.requeued AS queued, a.running AS active, a.queued AS bound
FROM corral_agents a
WHERE a.agent = %(agent)s
FOR UPDATE

-- name: find_dedupe_any
-- The item stored under any of :keys (a key and its aliases), oldest first.
SELECT * FROM corral_queue WHERE dedupe_key = ANY(%(keys)s)
ORDER BY id LIMIT 1

-- name: claimable
-- Up to %(limit)s items to claim, fair across agents: round robin, each agent's oldest
-- first, agents in the order of their oldest waiting item (so one agent's burst of a
-- thousand holds no other agent's item back more than one batch). Per agent at most
-- (the pool size the autoscaler decided, 0022, lowers scale: the least of the two)
-- scale - running. The agent rows are locked FOR UPDATE SKIP LOCKED: another scheduler
-- claiming meanwhile takes other agents, never waits; a row locked after a concurrent
-- claim committed is read as it is now (running included), so scale holds exactly.
-- An item reserved for a `corral run` in the foreground (a queued item with an unexpired
-- lease) keeps its place in line, but only its owner may claim it.
WITH candidates AS (
    SELECT a.agent, least(a.scale, coalesce(a.pool_size, a.scale)) - a.running AS free
    FROM corral_agents a
    WHERE a.present AND a.enabled AND NOT a.paused
      AND a.running < least(a.scale, coalesce(a.pool_size, a.scale))
      AND a.queued + a.requeued > 0
      AND (NOT %(restricted)s OR a.agent = ANY(%(agents)s))
    ORDER BY (SELECT min(q.id) FROM corral_queue q
              WHERE q.agent = a.agent AND q.state = 'queued'), a.agent
    LIMIT %(limit)s
    FOR UPDATE OF a SKIP LOCKED
),
picked AS (
    SELECT q.id, q.agent, q.trigger_kind, q.lease_owner, q.lease_expires_at,
           row_number() OVER (PARTITION BY q.agent ORDER BY q.id) AS position
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT q.id, q.agent, q.trigger_kind, q.lease_owner, q.lease_expires_at
        FROM corral_queue q
        WHERE q.agent = c.agent AND q.state = 'queued'
        ORDER BY q.id
        LIMIT least(c.free, %(limit)s)
        FOR UPDATE SKIP LOCKED
    ) q
)
SELECT id, agent, trigger_kind FROM picked
WHERE lease_owner IS NULL OR lease_expires_at < %(now)s
ORDER BY position, id
LIMIT %(limit)s

-- name: claimable_item
-- One given item, if its agent may take it now (FIFO order aside: it was asked for).
-- Bounded by scale, not by the autoscaler's pool size (0022): a person asked for this
-- run in the foreground, and a pool of min 0 with no scheduler running would never take it.
-- Waits for the agent's row (a claim of the same agent in progress), then reads it as
-- it is now.
SELECT q.id, q.agent, q.trigger_kind
FROM corral_queue q
JOIN corral_agents a ON a.agent = q.agent
WHERE q.id = %(item_id)s AND q.state = 'queued'
  AND (q.lease_owner IS NULL OR q.lease_owner = %(owner)s OR q.lease_expires_at < %(now)s)
  AND a.present AND a.enabled AND NOT a.paused AND a.running < a.scale
FOR UPDATE OF q, a

-- name: insert_claim_runs
-- The runs of a batch of claims, in one statement: plan is a JSON array of
-- {item_id, run_id, fence, secret_hash} (secret_hash may be null: set later).
INSERT INTO corral_runs (id, agent, trigger_kind, trigger_detail, prompt, state,
                         parent_run_id, created_at, item_id, fence, attempt, owner,
                         bundle, secret_hash)
SELECT p.run_id, q.agent, q.trigger_kind, q.trigger_detail, q.prompt, 'starting',
       q.parent_run_id, %(now)s, q.id, p.fence, q.attempts + 1, %(owner)s, %(bundle)s,
       p.secret_hash
FROM jsonb_to_recordset(%(plan)s::jsonb)
     AS p(item_id bigint, run_id text, fence bigint, secret_hash text)
JOIN corral_queue q ON q.id = p.item_id AND q.state = 'queued'
RETURNING *

-- name: claim_items
-- The items of a batch of claims, in one statement (plan as insert_claim_runs).
UPDATE corral_queue q
SET state = 'claimed', claimed_at = %(now)s, attempts = q.attempts + 1,
    lease_owner = %(owner)s, lease_expires_at = %(expires_at)s, fence = p.fence,
    run_id = p.run_id
FROM jsonb_to_recordset(%(plan)s::jsonb) AS p(item_id bigint, run_id text, fence bigint)
WHERE q.id = p.item_id AND q.state = 'queued'
RETURNING q.*

-- name: start_claimed_calls
-- The calls whose items a batch just claimed now run as the claims' runs.
UPDATE corral_calls c SET state = 'running', callee_run_id = p.run_id
FROM jsonb_to_recordset(%(plan)s::jsonb) AS p(item_id bigint, run_id text, fence bigint)
WHERE c.item_id = p.item_id AND c.state IN ('pending', 'running')


-- name: claim_batch
-- A whole batch claim in one statement, for a project without a scale cap: claimable,
-- its fences, runs and claims, and the calls of call items started, as the statements
-- of that name do one at a time (same rows, same locks, in the same order: agent rows,
-- then items, then calls). Run ids are drawn here (the agent's name, '-', 12 random hex
-- digits from gen_random_uuid's random bits) and the i-th claim in item order gets
-- %(secret_hashes)s[i] (null past its end: the secret is then set later). The result
-- always has a row: ``capped`` says the project has a scale cap (nothing was claimed: the
-- caller runs the transaction that takes the project lock instead), ``paused`` that it
-- is paused; each claim is one row, its run's columns and the item as claimed_item.
-- Unlike claimable, the chosen agents' rows are locked in name order and WAITED for,
-- not skipped: every writer holds an agent row for one statement or one pipelined
-- transaction (a run's end, an intake, another claim), and skipping it made a claim of
-- a busy agent come back empty while any of its runs was ending. Name order means two
-- claims never wait on each other in a cycle; the conditions are checked again on the
-- row as locked (EvalPlanQual), so scale holds exactly as before.
WITH project AS (
    SELECT paused, scale_cap IS NOT NULL AS capped FROM corral_project WHERE id = 1
),
heads AS (
    SELECT a.agent
    FROM corral_agents a
    WHERE a.present AND a.enabled AND NOT a.paused
      AND a.running < least(a.scale, coalesce(a.pool_size, a.scale))
      AND a.queued + a.requeued > 0
      AND NOT EXISTS (SELECT 1 FROM corral_project pr
                      WHERE pr.id = 1 AND (pr.paused OR pr.scale_cap IS NOT NULL))
    ORDER BY (SELECT min(q.id) FROM corral_queue q
              WHERE q.agent = a.agent AND q.state = 'queued'), a.agent
    LIMIT %(limit)s
),
candidates AS (
    SELECT a.agent, least(a.scale, coalesce(a.pool_size, a.scale)) - a.running AS free
    FROM corral_agents a
    WHERE a.agent IN (SELECT agent FROM heads)
      AND a.present AND a.enabled AND NOT a.paused
      AND a.running < least(a.scale, coalesce(a.pool_size, a.scale))
      AND a.queued + a.requeued > 0
    ORDER BY a.agent
    FOR UPDATE OF a
),
picked AS (
    SELECT q.id, q.agent, q.trigger_kind, q.lease_owner, q.lease_expires_at,
           row_number() OVER (PARTITION BY q.agent ORDER BY q.id) AS position
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT q.id, q.agent, q.trigger_kind, q.lease_owner, q.lease_expires_at
        FROM corral_queue q
        WHERE q.agent = c.agent AND q.state = 'queued'
        ORDER BY q.id
        LIMIT least(c.free, %(limit)s)
        FOR UPDATE SKIP LOCKED
    ) q
),
chosen AS (
    SELECT id, agent, trigger_kind FROM picked
    WHERE lease_owner IS NULL OR lease_expires_at < %(now)s
    ORDER BY position, id
    LIMIT %(limit)s
),
plan AS MATERIALIZED (
    SELECT c.id AS item_id, c.trigger_kind,
           c.agent || '-' || left(replace(gen_random_uuid()::text, '-', ''), 12) AS run_id,
           nextval('corral_fences') AS fence,
           (%(secret_hashes)s::text[])[row_number() OVER (ORDER BY c.id)] AS secret_hash
    FROM chosen c
),
runs AS (
    INSERT INTO corral_runs (id, agent, trigger_kind, trigger_detail, prompt, state,
                             parent_run_id, created_at, item_id, fence, attempt, owner,
                             secret_hash, bundle)
    SELECT p.run_id, q.agent, q.trigger_kind, q.trigger_detail, q.prompt, 'starting',
           q.parent_run_id, %(now)s, q.id, p.fence, q.attempts + 1, %(owner)s, p.secret_hash,
           %(bundle)s
    FROM plan p JOIN corral_queue q ON q.id = p.item_id
    RETURNING *
),
items AS (
    UPDATE corral_queue q
    SET state = 'claimed', claimed_at = %(now)s, attempts = q.attempts + 1,
        lease_owner = %(owner)s, lease_expires_at = %(expires_at)s, fence = p.fence,
        run_id = p.run_id
    FROM plan p
    WHERE q.id = p.item_id AND q.state = 'queued'
    RETURNING q.*
),
calls AS (
    UPDATE corral_calls c SET state = 'running', callee_run_id = p.run_id
    FROM plan p
    WHERE p.trigger_kind = 'call' AND c.item_id = p.item_id
      AND c.state IN ('pending', 'running')
    RETURNING c.id
)
SELECT pr.capped, pr.paused, (SELECT count(*) FROM calls) AS calls_started,
       r.*, to_jsonb(i) AS claimed_item
FROM project pr
LEFT JOIN (runs r JOIN items i ON i.id = r.item_id) ON true
ORDER BY r.item_id
-- name: mark_runs_running
-- mark_run_running for several runs at once (Store.mark_run_running's batch): each run
-- that is still starting gets its own start time, pid and host; the others are left
-- as they are and are not returned.
UPDATE corral_runs r
SET state = 'running', started_at = m.started_at, pid = m.pid, host = m.host
FROM unnest(%(ids)s::text[], %(pids)s::integer[], %(hosts)s::text[],
            %(started)s::timestamptz[]) AS m(id, pid, host, started_at)
WHERE r.id = m.id AND r.state = 'starting'
RETURNING r.*

-- name: renew_run_leases
UPDATE corral_queue SET lease_expires_at = %(expires_at)s
WHERE state = 'claimed' AND lease_owner = %(owner)s
  AND run_id = ANY(%(run_ids)s)

-- name: renew_runner_leases
-- A runner's heartbeat: the leases of the runs it reports (``held``: 'run_id:fence') that
-- it still holds with that fence and that have not lapsed, renewed without the project
-- row: recovery takes only lapsed leases, re-checked under its row locks, and a lapsed
-- lease is never renewed here. Answers each renewed run and whether it is to be killed.
UPDATE corral_queue SET lease_expires_at = %(expires_at)s
WHERE state = 'claimed' AND lease_owner = %(owner)s AND lease_expires_at >= %(now)s
  AND run_id = ANY(%(run_ids)s) AND (run_id || ':' || fence) = ANY(%(held)s)
RETURNING run_id,
    (SELECT r.kill_requested_at IS NOT NULL FROM corral_runs r
     WHERE r.id = corral_queue.run_id AND r.state IN ('queued', 'starting', 'running')) AS kill

-- name: lock_item_to_end
-- finalize_run's first step, a statement of its own: the run's item row, locked (item,
-- run, agent: the order recovery and the transactional finalise take them in). NO KEY
-- UPDATE, as the UPDATE that follows takes: a claim inserting a run that refers to
-- these rows (FOR KEY SHARE) does not wait for it.
SELECT q.id FROM corral_queue q
WHERE q.id = (SELECT r.item_id FROM corral_runs r WHERE r.id = %(run_id)s)
FOR NO KEY UPDATE

-- name: lock_run_to_end
-- finalize_run's second step: the run row, locked. A lock grant in flight holds it FOR
-- SHARE (corral_rlock, corral_lock_serve); this waits for that grant to commit, so that
-- finalize_run, a statement after this one with a snapshot of its own, sees and
-- releases the lock; a grant that comes after waits for the end and finds the run ended.
SELECT r.id FROM corral_runs r WHERE r.id = %(run_id)s FOR NO KEY UPDATE

-- name: lock_agent_to_end
-- finalize_run's third step: the row of the run's agent, whose counters finalize_run's
-- trigger updates. Taken before finalize_run touches any call row: a claim holds agent
-- rows and then updates call rows (start_claimed_calls), so taking them the other way
-- round (call rows, then the agent row at the trigger) could close a cycle.
SELECT a.agent FROM corral_agents a
WHERE a.agent = (SELECT r.agent FROM corral_runs r WHERE r.id = %(run_id)s)
FOR NO KEY UPDATE

-- name: finalize_run
-- ``finalize`` as ONE statement (one round trip, autocommit), for the usual end of a run:
-- the same steps as its transaction (finish_item, finish_run, release_run_locks,
-- delete_run_waits, delete_run_wants, clear_run_call_waits, answer_call, and the run's
-- task claims back to open: release_run_tasks), each fed by
-- the one before, so the item row is locked before the run's (as recovery does).
-- ``plain`` admits only a run that queues no rerun and holds no lock anyone waits for;
-- any other case (and a stale fence) returns no row and changes nothing: ``finalize``
-- then runs its transaction, which decides and words refusals as it always did.
-- Returns the ended run's columns and the finished item as ``finished_item`` (jsonb).
-- (call_waits and answered change different rows: a run never calls its own agent.)
WITH plain AS (
    SELECT r.id, r.item_id FROM corral_runs r
    WHERE r.id = %(run_id)s AND r.state IN ('starting', 'running') AND r.item_id IS NOT NULL
      AND NOT (r.rerun_requested AND %(state)s = 'succeeded'
               AND r.trigger_kind IN ('schedule', 'manual'))
      AND NOT EXISTS (
          SELECT 1 FROM corral_locks l JOIN corral_lock_waits w ON w.key = l.key
          WHERE l.run_id = r.id)
),
item AS (
    UPDATE corral_queue q
    SET state = 'done', finished_at = %(now)s, lease_expires_at = NULL
    FROM plain
    WHERE q.id = plain.item_id AND q.state = 'claimed' AND q.fence = %(fence)s
    RETURNING q.*
),
ended AS (
    UPDATE corral_runs r
    SET state = %(state)s, exit_code = %(exit_code)s, error = %(error)s, ended_at = %(now)s
    FROM item
    WHERE r.id = %(run_id)s AND r.item_id = item.id AND r.state IN ('starting', 'running')
    RETURNING r.*
),
locks AS (
    DELETE FROM corral_locks WHERE run_id IN (SELECT id FROM ended) RETURNING key
),
waits AS (
    DELETE FROM corral_lock_waits WHERE run_id IN (SELECT id FROM ended) RETURNING id
),
wants AS (
    DELETE FROM corral_lock_wants WHERE run_id IN (SELECT id FROM ended) RETURNING key
),
call_waits AS (
    UPDATE corral_calls SET waiting_since = NULL
    WHERE caller_run_id IN (SELECT id FROM ended) AND waiting_since IS NOT NULL
    RETURNING id
),
answered AS (
    UPDATE corral_calls c
    SET state = CASE WHEN e.state = 'succeeded' THEN 'completed' ELSE 'error' END,
        return_value = CASE WHEN e.state = 'succeeded' THEN e.return_value END,
        error = CASE WHEN e.state = 'succeeded' THEN NULL
                     ELSE e.agent || ' run ' || e.id || ' ' || e.state
                          || COALESCE(': ' || NULLIF(e.error, ''), '') END,
        ended_at = %(now)s, waiting_since = NULL
    FROM ended e
    WHERE e.trigger_kind = 'call' AND c.callee_run_id = e.id
      AND c.state IN ('pending', 'running')
    RETURNING c.id
),
tasks AS (
    UPDATE corral_tasks
    SET status = 'open', assignee = NULL, run_id = NULL, expires_at = NULL,
        updated_at = %(now)s
    WHERE status = 'claimed' AND run_id IN (SELECT id FROM ended)
    RETURNING project, id, token
),
task_events AS (
    INSERT INTO corral_task_events (project, task_id, at, kind, token, detail)
    SELECT project, id, %(now)s, 'run ended', token, %(run_id)s FROM tasks
)
SELECT e.*, to_jsonb(i) AS finished_item FROM ended e JOIN item i ON i.id = e.item_id

-- name: lapsed_items
-- FOR UPDATE: a finalize of the same item waits, then finds it taken back (StaleFence).
SELECT * FROM corral_queue
WHERE state = 'claimed' AND lease_expires_at < %(now)s
ORDER BY id
FOR UPDATE

-- name: claimed_for_runner
-- The runs a claim just made for a runner record it (plan as insert_claim_runs).
UPDATE corral_runs SET runner_id = %(owner)s
WHERE id IN (SELECT p.run_id
             FROM jsonb_to_recordset(%(plan)s::jsonb) AS p(item_id bigint, run_id text,
                                                           fence bigint))

-- name: owner_items
SELECT * FROM corral_queue
WHERE state = 'claimed' AND lease_owner = %(owner)s
ORDER BY id
FOR UPDATE

-- name: request_rerun
UPDATE corral_runs SET rerun_requested = true
WHERE id = %(id)s AND state IN ('queued', 'starting', 'running')
RETURNING *

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

-- name: rlock
-- rlock, runlock, rlock-heartbeat: one round trip each (the functions of migration 0013).
-- now: the store's clock when a test installed one, else NULL (the server's, read once
-- the key's lock is held).
SELECT * FROM corral_rlock(%(key)s, %(run_id)s, %(now)s, %(ttl)s, %(want)s)

-- name: runlock
SELECT corral_runlock(%(key)s, %(run_id)s, %(now)s) AS released

-- name: rlock_heartbeat
SELECT corral_rlock_heartbeat(%(key)s, %(run_id)s, %(now)s, %(ttl)s) AS expires_at

-- name: lock_batch
-- Concurrent rlock, runlock and rlock-heartbeat calls in one round trip and one commit
-- (migration 0018): row n answers operation n, in the shape of corral_rlock's rows.
SELECT * FROM corral_lock_batch(%(ops)s::text[], %(keys)s::text[], %(run_ids)s::text[],
                                %(nows)s::timestamptz[], %(ttls)s::float8[],
                                %(wants)s::float8[])

-- name: lock_project_for_call
-- The project row locked as ``lock_project`` does, with what a call needs of its
-- caller (state, agent, the depth of the call it answers, if any): the first three
-- statements of ``create_call`` as one. caller_state is NULL for an unknown run.
SELECT p.*, r.state AS caller_state, r.agent AS caller_agent,
    (SELECT c.depth FROM corral_calls c WHERE c.callee_run_id = r.id LIMIT 1)
        AS caller_depth
FROM corral_project p LEFT JOIN corral_runs r ON r.id = %(run_id)s
WHERE p.id = 1
FOR UPDATE OF p

-- name: spend_since
-- Dollars spent by runs created at or after :since (one agent's, or the project's).
SELECT COALESCE(sum(cost_usd), 0) AS cost FROM corral_runs
WHERE created_at >= %(since)s AND (%(agent)s::text IS NULL OR agent = %(agent)s::text)

-- name: spend_by_agent_since
-- Dollars spent per agent by runs created at or after :since (their sum: the project's).
SELECT agent, COALESCE(sum(cost_usd), 0) AS cost FROM corral_runs
WHERE created_at >= %(since)s
GROUP BY agent

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

-- name: find_receipt_deliveries
-- find_receipt_delivery for a whole batch of deliveries (``record_delivery`` on
-- PostgreSQL): the receipts that took any of these (source, delivery id) pairs.
-- One probe of the receipts' unique delivery index per pair: the LIMIT keeps the lookup a
-- subquery of its own (a plain join was planned as a hash join over a full scan of that
-- index, every receipt ever taken read by every batch).
SELECT d.source, d.delivery_id, r.id
FROM unnest(%(sources)s::text[], %(delivery_ids)s::text[]) AS d (source, delivery_id)
CROSS JOIN LATERAL (
    SELECT t.id FROM corral_webhook_receipts t
    WHERE t.source = d.source AND t.delivery_id = d.delivery_id
      AND t.replay_of IS NULL AND t.outcome IN ('accepted', 'ping')
    LIMIT 1
) AS r

-- name: insert_receipts
-- insert_receipt for a whole batch of deliveries in one statement: one array per column,
-- each sent in binary: a text array would spell every body in escaped hex and
-- quote each element, ~0.1 ms of the gateway's CPU per delivery.
INSERT INTO corral_webhook_receipts
    (id, source, event, delivery_id, received_at, headers, body, body_size, body_truncated,
     verified, verification, outcome, error, results, replay_of, duplicate_of,
     repeat_key)
SELECT * FROM unnest(
    %(id)b::text[], %(source)b::text[], %(event)b::text[], %(delivery_id)b::text[],
    %(received_at)b::timestamptz[], %(headers)b::jsonb[], %(body)b::bytea[],
    %(body_size)b::bigint[], %(body_truncated)b::boolean[], %(verified)b::boolean[],
    %(verification)b::text[], %(outcome)b::text[], %(error)b::text[], %(results)b::jsonb[],
    %(replay_of)b::text[], %(duplicate_of)b::text[], %(repeat_key)b::text[])

-- name: list_receipts
-- Newest first; each filter applies only when its parameter is not NULL.
SELECT * FROM corral_webhook_receipts
WHERE (%(source)s::text IS NULL OR source = %(source)s::text)
  AND (%(outcome)s::text IS NULL OR outcome = %(outcome)s::text)
  AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s::timestamptz)
ORDER BY received_at DESC, id DESC
LIMIT %(limit)s

-- /metrics ------------------------------------------------------------------------------

-- name: bound_lock_waits
-- A request's transaction waits this long at most for a row lock (the project row, held
-- by another writer), then fails with lock_not_available instead of committing late.
SELECT set_config('lock_timeout', %(timeout)s, true) AS bounded

-- name: head_waiter
-- The first live waiter for a key whose wait has not expired: the next holder. FOR SHARE
-- OF r: a run being ended is waited for, re-read and passed over (see corral_lock_serve).
SELECT w.* FROM corral_lock_waits w JOIN corral_runs r ON r.id = w.run_id
WHERE w.key = %(key)s AND w.deadline > %(now)s AND r.state IN ('starting', 'running')
ORDER BY w.id
LIMIT 1
FOR SHARE OF r

-- name: enqueue_items
-- Intake of :items (a JSON array of new items) in order, one round trip: the rows of
-- corral_enqueue (migration 0017), ord the position of the item each row is about.
SELECT * FROM corral_enqueue(%(items)s, %(overflow)s, %(now)s)

-- name: create_call
-- create_call in one round trip (corral_create_call, migration 0017).
SELECT * FROM corral_create_call(%(run_id)s, %(target)s, %(context)s, %(max_depth)s,
                                 %(id)s, %(now)s)

-- name: enqueue_request
-- enqueue_request in one round trip (corral_enqueue_request, migration 0017).
SELECT * FROM corral_enqueue_request(%(item)s, %(overflow)s, %(now)s, %(key)s,
                                     %(fingerprint)s, %(expires_at)s, %(actor)s,
                                     %(action)s, %(lock_wait)s)

-- name: open_anomaly_of
-- The open anomaly of a kind and subject (an episode's row), locked: two processes that
-- see one occurrence at once update it one after the other.
SELECT * FROM corral_anomalies
WHERE kind = %(kind)s AND subject = %(subject)s AND resolved_at IS NULL
ORDER BY id DESC
LIMIT 1
FOR UPDATE

-- name: runs_ended_by_hour
-- Runs ended at or after :since by UTC hour ('YYYY-MM-DDTHH'), agent and runner (NULL:
-- the control plane): the fleet page's throughput chart.
SELECT to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24') AS hour, agent, runner_id, count(*) AS ended
FROM corral_runs
WHERE ended_at >= %(since)s AND ended_at IS NOT NULL
GROUP BY to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), agent, runner_id

-- name: heartbeats_by_credential
-- heartbeat_by_credential for several runners at once (the runner API's heartbeats that
-- arrive together): each known, unrevoked runner among :hashes is recorded as heard at
-- :now, with the version at its index (empty: unchanged); the others are not returned.
UPDATE corral_runners r
SET last_heartbeat_at = %(now)s, offline_since = NULL,
    version = CASE WHEN h.version = '' THEN r.version ELSE h.version END
FROM unnest(%(hashes)s::text[], %(versions)s::text[]) AS h(credential_hash, version)
WHERE r.credential_hash = h.credential_hash AND r.state <> 'revoked'
RETURNING r.*

-- ---------------------------------------------------------------------------------------
-- The task board (_tasks).

-- Changes to a project's dependency graph (adding tasks, editing requirements) are
-- serialised per project, so two of them cannot close a cycle together.
-- name: lock_task_graph
SELECT pg_advisory_xact_lock(hashtextextended('corral_tasks:' || %(project)s, 0));

-- The best open task of the minimum priority or more whose every requirement is done
-- and that has every label asked for (read from the row's own copy of its labels: no
-- probe per label), in any project, claimed in ONE statement: the candidate row is locked
-- SKIP LOCKED (concurrent claimers take different tasks), and the claim's history event
-- is written by the same statement.
-- name: claim_task
WITH picked AS (
    UPDATE corral_tasks t
    SET status = 'claimed', assignee = %(claimer)s, run_id = %(run_id)s, token = t.token + 1,
        claimed_at = %(now)s, heartbeat_at = %(now)s, expires_at = %(expires_at)s,
        attempts = t.attempts + 1, result = NULL, updated_at = %(now)s
    WHERE t.status = 'open' AND (t.project, t.id) = (
        SELECT c.project, c.id FROM corral_tasks c
        WHERE c.status = 'open' AND c.priority >= %(min_priority)s
            AND NOT EXISTS (
                SELECT 1 FROM corral_task_edges e
                JOIN corral_tasks r ON r.project = e.project AND r.id = e.requires
                WHERE e.project = c.project AND e.task_id = c.id AND r.status <> 'done')
            AND (cardinality(%(labels)s::text[]) = 0
                 OR (SELECT c.labels @> to_jsonb(%(labels)s::text[])))
        ORDER BY c.priority DESC, c.created_at, c.id, c.project
        LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING t.*
), logged AS (
    INSERT INTO corral_task_events (project, task_id, at, kind, actor, token, detail)
    SELECT project, id, %(now)s, 'claimed', %(claimer)s, token, %(run_id)s FROM picked
)
SELECT * FROM picked;

-- The claims of several claimers with one filter (no project; D123), in one statement:
-- the best %(k)s eligible tasks, taken FOR UPDATE SKIP LOCKED once (a MATERIALIZED CTE is
-- evaluated once, not per target row), numbered in claim order and given to the
-- claimers in the order of %(claimers)s (row n to claimer n). Fewer tasks than claimers:
-- the last claimers get none. Each claim's history event in the same statement.
-- name: claim_tasks_batch
WITH wanted AS (
    SELECT w.claimer, w.run_id, w.n
    FROM unnest(%(claimers)s::text[], %(run_ids)s::text[]) WITH ORDINALITY AS w(claimer, run_id, n)
), picked AS MATERIALIZED (
    SELECT c.project, c.id, c.priority, c.created_at FROM corral_tasks c
    WHERE c.status = 'open' AND c.priority >= %(min_priority)s
        AND NOT EXISTS (
            SELECT 1 FROM corral_task_edges e
            JOIN corral_tasks r ON r.project = e.project AND r.id = e.requires
            WHERE e.project = c.project AND e.task_id = c.id AND r.status <> 'done')
        AND (cardinality(%(labels)s::text[]) = 0
             OR (SELECT c.labels @> to_jsonb(%(labels)s::text[])))
    ORDER BY c.priority DESC, c.created_at, c.id, c.project
    LIMIT %(k)s
    FOR UPDATE OF c SKIP LOCKED
), numbered AS (
    SELECT p.project, p.id,
        row_number() OVER (ORDER BY p.priority DESC, p.created_at, p.id, p.project) AS n
    FROM picked p
), claimed AS (
    UPDATE corral_tasks t
    SET status = 'claimed', assignee = w.claimer, run_id = w.run_id, token = t.token + 1,
        claimed_at = %(now)s, heartbeat_at = %(now)s, expires_at = %(expires_at)s,
        attempts = t.attempts + 1, result = NULL, updated_at = %(now)s
    FROM numbered p JOIN wanted w ON w.n = p.n
    WHERE t.project = p.project AND t.id = p.id AND t.status = 'open'
    RETURNING t.*, w.n AS claim_n
), logged AS (
    INSERT INTO corral_task_events (project, task_id, at, kind, actor, token, detail)
    SELECT project, id, %(now)s, 'claimed', assignee, token, run_id FROM claimed
)
SELECT * FROM claimed;

-- Completions and failures of several claims in one statement (D123), each with its
-- history event (the actor is the row's assignee, which finishing keeps). A claim that is
-- no longer the task's returns no row for its n.
-- name: finish_tasks_batch
WITH wanted AS (
    SELECT w.project, w.id, w.token, w.status, w.result, w.n
    FROM unnest(%(projects)s::text[], %(ids)s::text[], %(tokens)s::bigint[],
                %(statuses)s::text[], %(results)s::text[])
        WITH ORDINALITY AS w(project, id, token, status, result, n)
), ended AS (
    UPDATE corral_tasks t
    SET status = w.status, result = w.result, expires_at = NULL, updated_at = %(now)s
    FROM wanted w
    WHERE t.project = w.project AND t.id = w.id AND t.status = 'claimed' AND t.token = w.token
    RETURNING t.*, w.n AS finish_n
), logged AS (
    INSERT INTO corral_task_events (project, task_id, at, kind, actor, token, detail)
    SELECT project, id, %(now)s, status, assignee, token, result FROM ended
)
SELECT * FROM ended;

-- The claims several runs hold on tasks of the given ids (D123): row n's run and id.
-- name: claimed_tasks_of_runs
SELECT t.*, w.n AS lookup_n
FROM unnest(%(run_ids)s::text[], %(ids)s::text[]) WITH ORDINALITY AS w(run_id, id, n)
JOIN corral_tasks t ON t.run_id = w.run_id AND t.id = w.id AND t.status = 'claimed'
ORDER BY w.n, t.project;

-- name: claim_project_task
WITH picked AS (
    UPDATE corral_tasks t
    SET status = 'claimed', assignee = %(claimer)s, run_id = %(run_id)s, token = t.token + 1,
        claimed_at = %(now)s, heartbeat_at = %(now)s, expires_at = %(expires_at)s,
        attempts = t.attempts + 1, result = NULL, updated_at = %(now)s
    WHERE t.status = 'open' AND (t.project, t.id) = (
        SELECT c.project, c.id FROM corral_tasks c
        WHERE c.status = 'open' AND c.project = %(project)s
            AND c.priority >= %(min_priority)s
            AND NOT EXISTS (
                SELECT 1 FROM corral_task_edges e
                JOIN corral_tasks r ON r.project = e.project AND r.id = e.requires
                WHERE e.project = c.project AND e.task_id = c.id AND r.status <> 'done')
            AND (cardinality(%(labels)s::text[]) = 0
                 OR (SELECT c.labels @> to_jsonb(%(labels)s::text[])))
        ORDER BY c.priority DESC, c.created_at, c.id
        LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING t.*
), logged AS (
    INSERT INTO corral_task_events (project, task_id, at, kind, actor, token, detail)
    SELECT project, id, %(now)s, 'claimed', %(claimer)s, token, %(run_id)s FROM picked
)
SELECT * FROM picked;

-- The open tasks of :project of priority :min_priority or more whose every requirement
-- is done and that have every label in :labels (what claim_project_task would take),
-- counted up to :cap (the [[tasks]] trigger needs no more).
-- name: count_stream_tasks
SELECT count(*) AS n FROM (
    SELECT 1 FROM corral_tasks c
    WHERE c.status = 'open' AND c.project = %(project)s AND c.priority >= %(min_priority)s
        AND NOT EXISTS (
            SELECT 1 FROM corral_task_edges e
            JOIN corral_tasks r ON r.project = e.project AND r.id = e.requires
            WHERE e.project = c.project AND e.task_id = c.id AND r.status <> 'done')
        AND (cardinality(%(labels)s::text[]) = 0
             OR (SELECT c.labels @> to_jsonb(%(labels)s::text[])))
    LIMIT %(cap)s) s;

-- name: assign_canary
-- The runs just claimed that run the canary, while its rollout still runs (a rollout
-- ended a moment ago assigns nothing: new runs then run the baseline).
UPDATE corral_runs AS r
SET bundle = o.candidate
FROM corral_rollouts AS o
WHERE o.id = %(rollout)s AND o.state = 'running' AND r.id = ANY(%(ids)s)
RETURNING r.id, r.bundle

-- name: lock_provider_bucket
-- One grant at a time per bucket, across every process sharing the store.
SELECT * FROM corral_provider_buckets WHERE bucket = %(bucket)s FOR UPDATE
