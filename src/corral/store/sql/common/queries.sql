-- Named queries both dialects run as written. Each block starts with "-- name: <name>";
-- parameters are :name (SQLite's style), which corral.store._sqlfiles.to_pyformat turns
-- into %(name)s for PostgreSQL (and % into %%). A query of the same name in a dialect's
-- own queries.sql replaces the one here; one that says the same once translated is an
-- error, so write a query here once and in a dialect file only where the dialects differ.

-- name: applied_migrations
SELECT version, name, applied_at FROM corral_migrations ORDER BY version

-- name: create_run
INSERT INTO corral_runs (id, agent, trigger_kind, trigger_detail, prompt, state,
                         parent_run_id, created_at)
VALUES (:id, :agent, :trigger_kind, :trigger_detail, :prompt, :state,
        :parent_run_id, :created_at)
RETURNING *

-- name: get_run
SELECT * FROM corral_runs WHERE id = :id

-- name: mark_run_running
UPDATE corral_runs
SET state = 'running', started_at = :started_at, pid = :pid, host = :host
WHERE id = :id AND state = 'starting'
RETURNING *

-- name: finish_run
UPDATE corral_runs
SET state = :state, exit_code = :exit_code, error = :error, ended_at = :ended_at
WHERE id = :id AND state IN ('starting', 'running')
RETURNING *

-- name: finish_unqueued_run
-- finish_run for a run outside the queue; a claimed run ends with finalize.
UPDATE corral_runs
SET state = :state, exit_code = :exit_code, error = :error, ended_at = :ended_at
WHERE id = :id AND state IN ('starting', 'running') AND item_id IS NULL
RETURNING *

-- name: set_run_status
UPDATE corral_runs SET status_text = :status_text WHERE id = :id

-- name: count_runs
SELECT count(*) AS n FROM corral_runs

-- name: count_agent_runs
SELECT count(*) AS n FROM corral_runs WHERE agent = :agent

-- name: get_project
SELECT * FROM corral_project WHERE id = 1

-- name: update_project
UPDATE corral_project
SET scale_cap = :scale_cap, max_attempts = :max_attempts, max_reruns = :max_reruns,
    daily_cost_cap = :daily_cost_cap, updated_at = :now
WHERE id = 1

-- name: set_project_paused
UPDATE corral_project SET paused = :paused, updated_at = :now WHERE id = 1

-- name: get_agent
SELECT * FROM corral_agents WHERE agent = :agent

-- name: set_agent_scale
UPDATE corral_agents SET scale = :scale, updated_at = :now WHERE agent = :agent

-- name: set_agent_paused
UPDATE corral_agents SET paused = :paused, updated_at = :now WHERE agent = :agent

-- name: set_agent_enabled
UPDATE corral_agents SET enabled = :enabled, updated_at = :now WHERE agent = :agent

-- name: agent_states
-- queued / active from the counters the queue's triggers keep (0012), not counted.
SELECT a.agent, a.scale, a.queue_size, a.paused, a.enabled, a.present, a.daily_cost_cap,
       a.queued + a.requeued AS queued, a.running AS active
FROM corral_agents a
ORDER BY a.agent

-- name: agent_state
SELECT a.agent, a.scale, a.queue_size, a.paused, a.enabled, a.present, a.daily_cost_cap,
       a.queued + a.requeued AS queued, a.running AS active
FROM corral_agents a
WHERE a.agent = :agent

-- name: find_dedupe
SELECT * FROM corral_queue WHERE dedupe_key = :dedupe_key

-- name: drop_oldest
UPDATE corral_queue
SET state = 'dropped', reason = :reason, finished_at = :now
WHERE id IN (SELECT id FROM corral_queue
             WHERE agent = :agent AND state = 'queued' AND attempts = 0
             ORDER BY id LIMIT :n)
RETURNING *

-- name: renew_leases
UPDATE corral_queue SET lease_expires_at = :expires_at
WHERE state = 'claimed' AND lease_owner = :owner

-- name: reserve_item
-- A queued item only ``owner`` may claim until ``expires_at`` (`corral run` in the
-- foreground); claiming it, or a requeue, replaces the reservation.
UPDATE corral_queue SET lease_owner = :owner, lease_expires_at = :expires_at
WHERE id = :id AND state = 'queued'
RETURNING *

-- name: release_item
-- A run interrupted by a shutdown: its item goes back to the queue in its old place
-- (its id). The attempt counts, as a lost one does, so the item stays outside the queue
-- bound and is never dropped to make room.
UPDATE corral_queue
SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
WHERE id = :item_id AND state = 'claimed' AND fence = :fence
RETURNING *

-- name: heartbeat_scheduler
UPDATE corral_schedulers SET heartbeat_at = :now WHERE id = :id

-- name: finish_item
UPDATE corral_queue
SET state = 'done', finished_at = :now, lease_expires_at = NULL
WHERE id = :item_id AND state = 'claimed' AND fence = :fence
RETURNING *

-- name: get_item
SELECT * FROM corral_queue WHERE id = :id

-- name: requeue_item
UPDATE corral_queue
SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
WHERE id = :id AND state = 'claimed'
RETURNING *

-- name: fail_item
UPDATE corral_queue
SET state = 'failed', reason = :reason, finished_at = :now, lease_expires_at = NULL
WHERE id = :id AND state = 'claimed'
RETURNING *

-- name: request_kill
UPDATE corral_runs SET kill_requested_at = coalesce(kill_requested_at, :now)
WHERE id = :id AND state IN ('queued', 'starting', 'running')
RETURNING *

-- name: kill_requests
SELECT * FROM corral_runs
WHERE owner = :owner AND kill_requested_at IS NOT NULL
  AND state IN ('queued', 'starting', 'running')
ORDER BY created_at, id

-- name: register_scheduler
INSERT INTO corral_schedulers (id, host, pid, started_at, heartbeat_at, state, gateway_url)
VALUES (:id, :host, :pid, :now, :now, 'running', :gateway_url)
RETURNING *

-- name: set_scheduler_state
UPDATE corral_schedulers SET state = :state, heartbeat_at = :now WHERE id = :id

-- name: list_schedulers
SELECT * FROM corral_schedulers ORDER BY started_at, id

-- name: list_live_schedulers
SELECT * FROM corral_schedulers
WHERE state IN ('running', 'draining') AND heartbeat_at >= :since
ORDER BY started_at, id

-- name: acquire_lock
-- Free -> inserted; expired or held by the same run -> updated (the same run keeps its
-- token and acquired_at); held unexpired by another run -> no row returned.
INSERT INTO corral_locks (key, run_id, token, acquired_at, expires_at)
VALUES (:key, :run_id, :token, :now, :expires_at)
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
SELECT * FROM corral_locks WHERE key = :key

-- name: release_lock
DELETE FROM corral_locks WHERE key = :key AND run_id = :run_id

-- name: heartbeat_lock
UPDATE corral_locks SET expires_at = :expires_at
WHERE key = :key AND run_id = :run_id
RETURNING expires_at

-- name: list_locks
SELECT l.key, l.run_id, r.agent, l.token, l.acquired_at, l.expires_at
FROM corral_locks l JOIN corral_runs r ON r.id = l.run_id
ORDER BY l.key

-- name: get_lock
SELECT l.key, l.run_id, r.agent, l.token, l.acquired_at, l.expires_at
FROM corral_locks l JOIN corral_runs r ON r.id = l.run_id
WHERE l.key = :key

-- name: delete_lock
DELETE FROM corral_locks WHERE key = :key AND token = :token

-- name: release_run_locks
-- Every lock of a run that ended, released; the keys come back so waiters can be served.
DELETE FROM corral_locks WHERE run_id = :run_id
RETURNING key

-- name: release_lock_returning
DELETE FROM corral_locks WHERE key = :key AND run_id = :run_id
RETURNING key

-- name: head_waiter
-- The first live waiter for a key whose wait has not expired: the next holder.
SELECT w.* FROM corral_lock_waits w JOIN corral_runs r ON r.id = w.run_id
WHERE w.key = :key AND w.deadline > :now AND r.state IN ('starting', 'running')
ORDER BY w.id
LIMIT 1

-- name: hand_over_lock
INSERT INTO corral_locks (key, run_id, token, acquired_at, expires_at)
VALUES (:key, :run_id, :token, :now, :expires_at)
ON CONFLICT (key) DO UPDATE
SET run_id = excluded.run_id, token = excluded.token,
    acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
RETURNING *

-- name: get_wait
SELECT * FROM corral_lock_waits WHERE key = :key AND run_id = :run_id

-- name: insert_wait
INSERT INTO corral_lock_waits (key, run_id, since, deadline, ttl_seconds)
VALUES (:key, :run_id, :now, :deadline, :ttl_seconds)
RETURNING *

-- name: delete_wait
DELETE FROM corral_lock_waits WHERE key = :key AND run_id = :run_id

-- name: delete_run_waits
DELETE FROM corral_lock_waits WHERE run_id = :run_id

-- name: list_waits
SELECT * FROM corral_lock_waits WHERE deadline > :now ORDER BY key, id

-- name: lock_wait_edges
-- The lock half of the wait-for graph: each live waiter waits for the key's holder,
-- unless that lock expired (the waiter takes it at its next step).
SELECT w.run_id AS waiter, w.key AS via, l.run_id AS holder
FROM corral_lock_waits w
JOIN corral_locks l ON l.key = w.key
JOIN corral_runs r ON r.id = w.run_id
WHERE w.deadline > :now AND r.state IN ('starting', 'running') AND l.run_id <> w.run_id
  AND l.expires_at > :now

-- name: call_wait_edges
-- The call half: a caller in al-subagent-wait waits for the run answering its call.
SELECT caller_run_id AS waiter, id AS via, callee_run_id AS holder
FROM corral_calls
WHERE waiting_since IS NOT NULL AND state IN ('pending', 'running')
  AND callee_run_id IS NOT NULL

-- name: delete_run_wants
DELETE FROM corral_lock_wants WHERE run_id = :run_id

-- name: list_wants
SELECT * FROM corral_lock_wants WHERE expires_at > :now ORDER BY key, since, run_id

-- name: lock_want_edges
-- The try-lock half of the wait-for graph: a live run whose unexpired want names a key
-- another run holds (unexpired) waits for that run.
SELECT w.run_id AS waiter, w.key AS via, l.run_id AS holder
FROM corral_lock_wants w
JOIN corral_locks l ON l.key = w.key
JOIN corral_runs r ON r.id = w.run_id
WHERE w.expires_at > :now AND r.state IN ('starting', 'running') AND l.run_id <> w.run_id
  AND l.expires_at > :now

-- name: clear_run_call_waits
UPDATE corral_calls SET waiting_since = NULL
WHERE caller_run_id = :run_id AND waiting_since IS NOT NULL

-- name: insert_call
INSERT INTO corral_calls (id, caller_run_id, caller_agent, target_agent, depth, context,
                          item_id, state, created_at)
VALUES (:id, :caller_run_id, :caller_agent, :target_agent, :depth, :context,
        :item_id, 'pending', :now)
RETURNING *

-- name: get_call
SELECT * FROM corral_calls WHERE id = :id

-- name: list_calls
SELECT * FROM corral_calls ORDER BY created_at DESC, id DESC LIMIT :limit

-- name: depth_of_run
-- The depth of the call a run answers (none: the run was not called).
SELECT depth FROM corral_calls WHERE callee_run_id = :run_id

-- name: start_call
UPDATE corral_calls SET state = 'running', callee_run_id = :run_id
WHERE item_id = :item_id AND state IN ('pending', 'running')

-- name: answer_call
UPDATE corral_calls
SET state = :state, return_value = :return_value, error = :error, ended_at = :now,
    waiting_since = NULL
WHERE callee_run_id = :run_id AND state IN ('pending', 'running')
RETURNING *

-- name: requeue_call
UPDATE corral_calls SET state = 'pending', callee_run_id = NULL
WHERE item_id = :item_id AND state IN ('pending', 'running')

-- name: fail_item_calls
UPDATE corral_calls
SET state = 'error', error = :error, ended_at = :now, waiting_since = NULL
WHERE item_id = :item_id AND state IN ('pending', 'running')
RETURNING *

-- name: set_call_waiting
UPDATE corral_calls SET waiting_since = :since
WHERE id = :id AND caller_run_id = :caller_run_id

-- name: set_run_secret
UPDATE corral_runs SET secret_hash = :secret_hash
WHERE id = :id AND state IN ('starting', 'running')
RETURNING *

-- name: run_by_secret
SELECT * FROM corral_runs WHERE secret_hash = :secret_hash

-- name: set_run_status_live
UPDATE corral_runs SET status_text = :status_text, status_at = :now
WHERE id = :id AND state IN ('starting', 'running')
RETURNING *

-- name: set_return_value
UPDATE corral_runs SET return_value = :return_value
WHERE id = :id AND state IN ('starting', 'running')
RETURNING *

-- name: request_exit
UPDATE corral_runs SET exit_requested = :code
WHERE id = :id AND state IN ('starting', 'running')
RETURNING *

-- name: insert_audit
INSERT INTO corral_audit (at, actor, action, subject, detail)
VALUES (:now, :actor, :action, :subject, :detail)
RETURNING *

-- name: list_audit
SELECT * FROM corral_audit ORDER BY id DESC LIMIT :limit

-- name: record_usage
-- A built-in run's totals so far (absolute, so a repeated write changes nothing); the
-- budget that stopped it, once one did.
UPDATE corral_runs
SET input_tokens = :input_tokens, output_tokens = :output_tokens,
    cache_read_tokens = :cache_read_tokens, cache_write_tokens = :cache_write_tokens,
    cost_usd = :cost_usd, budget = COALESCE(:budget, budget)
WHERE id = :id
RETURNING *

-- name: find_receipt_delivery
-- The receipt that took this delivery id for its source (accepted or ping), if any.
SELECT * FROM corral_webhook_receipts
WHERE source = :source AND delivery_id = :delivery_id AND replay_of IS NULL
  AND outcome IN ('accepted', 'ping')

-- name: get_receipt
SELECT * FROM corral_webhook_receipts WHERE id = :id

-- name: prune_receipts
-- Every receipt received before older_than; a stranger's (0009) before strangers_before.
DELETE FROM corral_webhook_receipts
WHERE received_at < :older_than
   OR (repeat_key IS NOT NULL AND received_at < :strangers_before)

-- name: prune_stranger_receipts
DELETE FROM corral_webhook_receipts
WHERE repeat_key IS NOT NULL AND received_at < :strangers_before

-- name: recent_repeats
-- A stranger's receipts of one kind since a time: how many, and the newest.
SELECT count(*) AS n, max(received_at) AS newest FROM corral_webhook_receipts
WHERE repeat_key = :repeat_key AND received_at >= :since

-- name: count_repeat
-- Count one more delivery on the newest receipt of a kind (recent_repeats' newest).
UPDATE corral_webhook_receipts
SET repeats = repeats + 1, last_repeat_at = :now
WHERE id = (
    SELECT id FROM corral_webhook_receipts
    WHERE repeat_key = :repeat_key AND received_at >= :since
    ORDER BY received_at DESC, id DESC
    LIMIT 1
)
RETURNING *

-- Operator tokens (0007) ------------------------------------------------------------------

-- name: insert_operator_token
-- Nothing when the name is taken (live or revoked) or the hash is.
INSERT INTO corral_operator_tokens (name, token_hash, created_at)
VALUES (:name, :token_hash, :now)
ON CONFLICT DO NOTHING
RETURNING *

-- name: get_operator_token
SELECT * FROM corral_operator_tokens WHERE name = :name

-- name: list_operator_tokens
SELECT * FROM corral_operator_tokens ORDER BY created_at, name

-- name: revoke_operator_token
UPDATE corral_operator_tokens SET revoked_at = :now
WHERE name = :name AND revoked_at IS NULL
RETURNING *

-- name: find_operator_token
SELECT * FROM corral_operator_tokens WHERE token_hash = :token_hash

-- name: touch_operator_token
UPDATE corral_operator_tokens SET last_used_at = :now WHERE name = :name

-- name: count_live_operator_tokens
SELECT count(*) AS n FROM corral_operator_tokens WHERE revoked_at IS NULL

-- /metrics ------------------------------------------------------------------------------

-- name: metrics_runs_since
-- Runs that started or ended at or after since, with when their item was queued.
SELECT r.*, q.enqueued_at AS item_enqueued_at
FROM corral_runs r LEFT JOIN corral_queue q ON q.id = r.item_id
WHERE r.ended_at >= :since OR r.started_at >= :since

-- name: metrics_items_set_aside_since
SELECT * FROM corral_queue
WHERE state IN ('dropped', 'rejected') AND finished_at >= :since

-- name: prune_request_keys
-- Idempotency keys past their time (see 0008); every keyed request prunes them first.
DELETE FROM corral_request_keys WHERE expires_at < :now

-- name: find_request_key
SELECT * FROM corral_request_keys WHERE key = :key

-- name: insert_request_key
INSERT INTO corral_request_keys
    (key, fingerprint, agent, item_id, dropped, created_at, expires_at)
VALUES (:key, :fingerprint, :agent, :item_id, :dropped, :now, :expires_at)

-- name: record_migration
INSERT INTO corral_migrations (version, name, applied_at) VALUES (:version, :name, :applied_at)

-- name: insert_item
INSERT INTO corral_queue (agent, trigger_kind, trigger_detail, prompt, parent_run_id,
                          rerun_count, dedupe_key, state, reason, enqueued_at,
                          finished_at, max_attempts)
VALUES (:agent, :trigger_kind, :trigger_detail, :prompt, :parent_run_id,
        :rerun_count, :dedupe_key, :state, :reason, :now,
        :finished_at, :max_attempts)
-- A racing insert of the same key (another agent's intake: one agent's take turns on its
-- row) answers no row; the caller then reads the winner as the duplicate.
ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
RETURNING *

-- name: count_active
-- The project's claimed items, from the counters (0012). Read after lock_project, in a
-- statement of its own: its snapshot then holds every claim committed before the lock.
SELECT coalesce(sum(running), 0) AS n FROM corral_agents

-- name: insert_receipt
INSERT INTO corral_webhook_receipts
    (id, source, event, delivery_id, received_at, headers, body, body_size, body_truncated,
     verified, verification, outcome, error, results, replay_of, duplicate_of,
     repeat_key)
VALUES (:id, :source, :event, :delivery_id, :received_at, :headers, :body, :body_size,
        :body_truncated, :verified, :verification, :outcome, :error, :results, :replay_of,
        :duplicate_of,
        :repeat_key)

-- -- the fleet (store/_fleet.py) ------------------------------------------------------

-- name: insert_fleet_token
INSERT INTO corral_fleet_tokens (id, token_hash, labels, note, created_by, created_at, expires_at)
VALUES (:id, :token_hash, :labels, :note, :created_by, :now, :expires_at)
RETURNING *

-- name: list_fleet_tokens
SELECT * FROM corral_fleet_tokens ORDER BY created_at, id

-- name: get_fleet_token
SELECT * FROM corral_fleet_tokens WHERE id = :id

-- name: find_fleet_token
SELECT * FROM corral_fleet_tokens WHERE token_hash = :token_hash

-- name: revoke_fleet_token
UPDATE corral_fleet_tokens SET revoked_at = :now
WHERE id = :id AND revoked_at IS NULL AND redeemed_at IS NULL
RETURNING *

-- name: redeem_fleet_token
-- The one statement that claims a token: of two redemptions at once, exactly one finds
-- redeemed_at still NULL (PostgreSQL re-reads the row after the other's commit; SQLite's
-- BEGIN IMMEDIATE runs them one after the other).
UPDATE corral_fleet_tokens SET redeemed_at = :now, redeemed_by = :runner_id
WHERE token_hash = :token_hash AND redeemed_at IS NULL AND revoked_at IS NULL
  AND expires_at > :now
RETURNING *

-- name: count_live_runners
SELECT count(*) AS n FROM corral_runners WHERE state <> 'revoked'

-- name: insert_runner
INSERT INTO corral_runners
    (id, name, hostname, credential_hash, labels, slots, version, state, joined_at,
     last_heartbeat_at, address, token_id)
VALUES (:id, :name, :hostname, :credential_hash, :labels, :slots, :version, 'active', :now,
        :now, :address, :token_id)
RETURNING *

-- name: find_runner_by_credential
SELECT * FROM corral_runners WHERE credential_hash = :credential_hash

-- name: get_runner
SELECT * FROM corral_runners WHERE id = :id

-- name: list_runners
SELECT * FROM corral_runners ORDER BY joined_at, id

-- name: set_runner_state
-- Compare and set: the state changes only from the one the caller read.
UPDATE corral_runners
SET state = :state, revoked_at = CASE WHEN :state = 'revoked' THEN :now ELSE revoked_at END
WHERE id = :id AND state = :expected
RETURNING *

-- name: heartbeat_runner
UPDATE corral_runners SET last_heartbeat_at = :now, version = :version, offline_since = NULL
WHERE id = :id AND state <> 'revoked'
RETURNING *

-- name: mark_runners_offline
-- Runners whose last heartbeat is older than the cutoff and that are not yet marked:
-- each is returned once per outage (a heartbeat clears offline_since).
UPDATE corral_runners SET offline_since = :now
WHERE state <> 'revoked' AND offline_since IS NULL AND last_heartbeat_at < :cutoff
RETURNING *

-- name: insert_anomaly
INSERT INTO corral_anomalies (kind, subject, at, evidence)
VALUES (:kind, :subject, :now, :evidence)
RETURNING *

-- name: get_anomaly
SELECT * FROM corral_anomalies WHERE id = :id

-- name: list_anomalies
SELECT * FROM corral_anomalies
WHERE (:include_resolved OR resolved_at IS NULL)
ORDER BY at DESC, id DESC
LIMIT :limit

-- name: resolve_anomaly
UPDATE corral_anomalies SET resolved_at = :now, resolved_by = :actor, resolution = :note
WHERE id = :id AND resolved_at IS NULL
RETURNING *

-- name: count_open_anomalies
SELECT kind, count(*) AS n FROM corral_anomalies WHERE resolved_at IS NULL GROUP BY kind

-- name: open_anomaly_of
-- The open anomaly of a kind and subject (an episode's row), if any.
SELECT * FROM corral_anomalies
WHERE kind = :kind AND subject = :subject AND resolved_at IS NULL
ORDER BY id DESC
LIMIT 1

-- name: insert_anomaly_episode
-- Nothing when another process opened this episode first (migration 0019's index).
INSERT INTO corral_anomalies (kind, subject, at, evidence)
VALUES (:kind, :subject, :now, :evidence)
ON CONFLICT (kind, subject) WHERE resolved_at IS NULL
    AND kind IN ('crash_loop', 'lock_expired', 'hook_failed', 'budget_overrun', 'run_stuck')
DO NOTHING
RETURNING *

-- name: update_anomaly_evidence
UPDATE corral_anomalies SET evidence = :evidence WHERE id = :id
RETURNING *

-- name: last_ends_on_runner
-- The runs a runner ended last (crash_loop), newest first, by the ended-runs index.
SELECT id, agent, state, exit_code FROM corral_runs
WHERE ended_at IS NOT NULL AND runner_id = :runner_id
ORDER BY ended_at DESC, id DESC
LIMIT :limit

-- name: last_ends_of_agent_here
-- The runs of an agent on the control plane ended last (crash_loop), newest first.
SELECT id, agent, state, exit_code FROM corral_runs
WHERE agent = :agent AND runner_id IS NULL AND ended_at IS NOT NULL
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: runs_ended_by_agent_and_runner
-- Grouped by runner first: grouped by agent first, SQLite walks corral_runs_agent_created
-- (every run ever made, in agent order, to spare a sort) instead of the range of
-- corral_runs_ended.
SELECT agent, runner_id, count(*) AS ended,
    sum(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END) AS succeeded
FROM corral_runs
WHERE ended_at >= :since AND ended_at IS NOT NULL
GROUP BY runner_id, agent

-- name: live_runs_by_runner_and_bundle
-- Runs starting or running now, by runner (NULL: the control plane) and the bundle they
-- run. The IN is the partial index corral_runs_live's own condition, word for word, so
-- that both planners use it (SQLite only matches a partial index's WHERE as written).
SELECT runner_id, bundle, count(*) AS live
FROM corral_runs
WHERE state IN ('queued', 'starting', 'running') AND state <> 'queued'
GROUP BY runner_id, bundle

-- bundles -------------------------------------------------------------------------------

-- name: insert_bundle
-- Nothing when a bundle with this hash is stored already (the same bytes).
INSERT INTO corral_bundles (hash, data, size, manifest, created_at, created_by, note)
VALUES (:hash, :data, :size, :manifest, :now, :actor, :note)
ON CONFLICT (hash) DO NOTHING
RETURNING hash, size, manifest, created_at, created_by, note

-- name: get_bundle
SELECT hash, size, manifest, created_at, created_by, note FROM corral_bundles
WHERE hash = :hash

-- name: get_bundle_data
SELECT data FROM corral_bundles WHERE hash = :hash

-- name: list_bundles
-- Project bundles only: their hashes start with "sha256:" (a corral wheel a fleet
-- upgrade stores here is "wheel:sha256:...", see _fleet_rollouts.py).
SELECT hash, size, manifest, created_at, created_by, note FROM corral_bundles
WHERE hash >= 'sha256:' AND hash < 'sha256;'
ORDER BY created_at DESC, hash
LIMIT :limit

-- name: find_bundles
-- The hashes starting with :prefix (a short hash the operator typed), at most a few.
SELECT hash FROM corral_bundles WHERE hash >= :prefix AND hash < :prefix_end
ORDER BY hash LIMIT 5

-- name: get_bundle_head
SELECT hash, set_at, set_by FROM corral_bundle_head WHERE id = 1

-- name: set_bundle_head
INSERT INTO corral_bundle_head (id, hash, set_at, set_by) VALUES (1, :hash, :now, :actor)
ON CONFLICT (id) DO UPDATE SET hash = excluded.hash, set_at = excluded.set_at,
                               set_by = excluded.set_by
RETURNING hash, set_at, set_by

-- name: any_runner_silent
-- A cheap read before mark_runners_offline's write: most looks find nobody to mark.
SELECT id FROM corral_runners
WHERE state <> 'revoked' AND offline_since IS NULL AND last_heartbeat_at < :cutoff
LIMIT 1

-- name: heartbeat_by_credential
-- A heartbeat authenticated and recorded in one statement (the runner API's fast path);
-- no row: unknown or revoked, which the caller tells apart the slow way.
UPDATE corral_runners
SET last_heartbeat_at = :now, offline_since = NULL,
    version = CASE WHEN :version = '' THEN version ELSE :version END
WHERE credential_hash = :credential_hash AND state <> 'revoked'
RETURNING *

-- name: calls_made_by
-- The calls a run made (its page), oldest first: corral_calls_caller.
SELECT * FROM corral_calls WHERE caller_run_id = :run_id
ORDER BY created_at, id LIMIT :limit

-- name: call_answered_by
-- The call a run was started to answer (none: the run was not called): corral_calls_callee.
SELECT * FROM corral_calls WHERE callee_run_id = :run_id

-- name: child_runs
-- Runs queued by a run (its reruns, and the runs that answer its calls), oldest first:
-- corral_runs_parent.
SELECT * FROM corral_runs WHERE parent_run_id = :run_id
ORDER BY created_at, id LIMIT :limit
-- name: any_lapsed
-- Is there a lease to take back? Read without locks: recovery takes the project row and
-- selects the lapsed items again only when one is found.
SELECT id FROM corral_queue WHERE state = 'claimed' AND lease_expires_at < :now LIMIT 1

-- name: runner_holdings
-- The runs a runner holds now (their items claimed by it), read without locking them:
-- every report of a runner checks it, and the writes that follow check the fence again.
SELECT id, run_id, fence FROM corral_queue
WHERE state = 'claimed' AND lease_owner = :owner

-- ---------------------------------------------------------------------------------------
-- The task board (_tasks): tasks, their dependency edges, labels and history (0021).

-- name: get_task
SELECT * FROM corral_tasks WHERE project = :project AND id = :id;

-- name: find_tasks
SELECT * FROM corral_tasks WHERE id = :id ORDER BY project;

-- name: project_task_edges
SELECT task_id, requires FROM corral_task_edges WHERE project = :project;

-- name: task_dependents
SELECT task_id FROM corral_task_edges
WHERE project = :project AND requires = :id
ORDER BY task_id;

-- name: insert_task
INSERT INTO corral_tasks (project, id, title, description, priority, requires, labels,
                          acceptance, extra, created_at, updated_at)
VALUES (:project, :id, :title, :description, :priority, :requires, :labels,
        :acceptance, :extra, :now, :now)
ON CONFLICT (project, id) DO NOTHING
RETURNING *;

-- name: insert_task_edge
INSERT INTO corral_task_edges (project, task_id, requires)
VALUES (:project, :task_id, :requires)
ON CONFLICT (project, task_id, requires) DO NOTHING;

-- name: delete_task_edges
DELETE FROM corral_task_edges WHERE project = :project AND task_id = :id;

-- name: insert_task_label
INSERT INTO corral_task_labels (project, task_id, label)
VALUES (:project, :task_id, :label)
ON CONFLICT (project, task_id, label) DO NOTHING;

-- name: delete_task_labels
DELETE FROM corral_task_labels WHERE project = :project AND task_id = :id;

-- name: set_task_requires
UPDATE corral_tasks SET requires = :requires, updated_at = :now
WHERE project = :project AND id = :id;

-- name: set_imported_task_status
UPDATE corral_tasks SET status = :status, updated_at = :now
WHERE project = :project AND id = :id
RETURNING *;

-- name: update_task
UPDATE corral_tasks
SET title = :title, description = :description, priority = :priority,
    acceptance = :acceptance, labels = :labels, requires = :requires, updated_at = :now
WHERE project = :project AND id = :id
RETURNING *;

-- name: insert_task_event
INSERT INTO corral_task_events (project, task_id, at, kind, actor, token, detail)
VALUES (:project, :task_id, :now, :kind, :actor, :token, :detail);

-- name: task_events
SELECT * FROM corral_task_events
WHERE project = :project AND task_id = :id
ORDER BY seq;

-- A heartbeat, a completion and a release act only on the claim whose token they carry.
-- name: heartbeat_task
UPDATE corral_tasks
SET heartbeat_at = :now, expires_at = :expires_at, updated_at = :now
WHERE project = :project AND id = :id AND status = 'claimed' AND token = :token
RETURNING *;

-- name: finish_task
UPDATE corral_tasks
SET status = :status, result = :result, expires_at = NULL, updated_at = :now
WHERE project = :project AND id = :id AND status = 'claimed' AND token = :token
RETURNING *;

-- name: release_task
UPDATE corral_tasks
SET status = 'open', assignee = NULL, run_id = NULL, expires_at = NULL, updated_at = :now
WHERE project = :project AND id = :id AND status = 'claimed' AND token = :token
RETURNING *;

-- Claims whose lease lapsed (corral_tasks_claimed) go back to open.
-- name: release_stalled_tasks
UPDATE corral_tasks
SET status = 'open', assignee = NULL, run_id = NULL, expires_at = NULL, updated_at = :now
WHERE status = 'claimed' AND expires_at < :now
RETURNING *;

-- A run that ended: its claims go back to open (corral_tasks_run).
-- name: release_run_tasks
UPDATE corral_tasks
SET status = 'open', assignee = NULL, run_id = NULL, expires_at = NULL, updated_at = :now
WHERE status = 'claimed' AND run_id = :run_id
RETURNING *;

-- name: claimed_task_of_run
SELECT * FROM corral_tasks
WHERE status = 'claimed' AND run_id = :run_id AND id = :id
ORDER BY project;

-- name: cancel_task
UPDATE corral_tasks
SET status = 'cancelled', expires_at = NULL, updated_at = :now
WHERE project = :project AND id = :id AND status IN ('open', 'claimed', 'failed')
RETURNING *;

-- A page of tasks in (project, id) order after the key (:after_project, :after_id).
-- name: list_tasks
SELECT * FROM corral_tasks t
WHERE (CAST(:project AS TEXT) IS NULL OR t.project = :project)
    AND (CAST(:status AS TEXT) IS NULL OR t.status = :status)
    AND (CAST(:label AS TEXT) IS NULL OR EXISTS (
        SELECT 1 FROM corral_task_labels l
        WHERE l.project = t.project AND l.task_id = t.id AND l.label = :label))
    AND (t.project > :after_project OR (t.project = :after_project AND t.id > :after_id))
ORDER BY t.project, t.id
LIMIT :limit;

-- name: take_pool_lease
-- Take or renew the lease on an agent's pool (0022): the one scheduler that decides its
-- size. Taken only when no live scheduler holds it; only agents with a pool (pool_size
-- not NULL: a [scale] table). Returns the pool as the claims see it.
UPDATE corral_agents
SET pool_owner = :owner, pool_lease_until = :until
WHERE agent = :agent AND pool_size IS NOT NULL
  AND (pool_owner IS NULL OR pool_owner = :owner OR pool_lease_until < :now)
RETURNING agent, scale, pool_size, queued + requeued AS queued, running

-- name: set_pool_size
-- The decided size, written only by the lease's holder, never above scale (the max).
UPDATE corral_agents
SET pool_size = CASE WHEN :size < scale THEN :size ELSE scale END
WHERE agent = :agent AND pool_owner = :owner AND pool_size IS NOT NULL
RETURNING pool_size

-- name: release_pool_leases
-- A scheduler that stops hands its pools on at once (another takes them at its next tick).
UPDATE corral_agents SET pool_owner = NULL, pool_lease_until = NULL
WHERE pool_owner = :owner

-- name: pool_states
-- Every agent with a pool: its size, its decider and the work it sees.
SELECT agent, scale, pool_size, pool_owner, pool_lease_until,
       queued + requeued AS queued, running
FROM corral_agents
WHERE pool_size IS NOT NULL
ORDER BY agent

-- name: pool_busy_runs
-- An agent's live runs (the pool's busy instances), oldest first.
SELECT id, created_at FROM corral_runs
WHERE agent = :agent AND state IN ('starting', 'running')
ORDER BY created_at, id

-- name: pool_arrivals
-- Items of an agent queued in (:since, :until] (arrivals since the previous tick).
SELECT count(*) AS n FROM corral_queue
WHERE agent = :agent AND enqueued_at > :since AND enqueued_at <= :until

-- name: pool_completions
-- Runs of an agent that ended in (:since, :until], with their times (their durations).
SELECT created_at, started_at, ended_at FROM corral_runs
WHERE agent = :agent AND ended_at > :since AND ended_at <= :until
  AND state NOT IN ('starting', 'running')

-- name: pool_project_room
-- The project cap and the runs of the other agents, in one statement (one snapshot on
-- PostgreSQL too): the cap's room for this agent is the cap less those.
SELECT p.scale_cap,
       (SELECT coalesce(sum(running), 0) FROM corral_agents WHERE agent <> :agent) AS others
FROM corral_project p WHERE p.id = 1

-- name: insert_pool_decision
INSERT INTO corral_pool_decisions
    (agent, decided_at, scheduler_id, policy, size, desired, direction, reason, inputs)
VALUES (:agent, :decided_at, :scheduler_id, :policy, :size, :desired, :direction, :reason,
        :inputs)
RETURNING *

-- name: list_pool_decisions
-- Newest first, below the id :before (a page's keyset) and recorded at :since or later.
SELECT * FROM corral_pool_decisions
WHERE id < :before AND decided_at >= :since
ORDER BY id DESC LIMIT :limit

-- name: list_agent_pool_decisions
SELECT * FROM corral_pool_decisions
WHERE agent = :agent AND id < :before AND decided_at >= :since
ORDER BY id DESC LIMIT :limit

-- name: pool_decision_counts
-- Decisions kept (within the retention) by agent and direction, for /metrics.
SELECT agent, direction, count(*) AS n FROM corral_pool_decisions GROUP BY agent, direction

-- name: prune_pool_decisions
DELETE FROM corral_pool_decisions WHERE decided_at < :older_than

-- The [[tasks]] trigger (store/_stream.py): its items are those whose dedupe key starts
-- with its prefix (no LIKE: an agent's name may hold LIKE's wildcards).
-- name: stream_items_live
SELECT id, state, run_id FROM corral_queue
WHERE agent = :agent AND state IN ('queued', 'claimed')
    AND substr(dedupe_key, 1, length(CAST(:prefix AS TEXT))) = :prefix;

-- name: stream_items_ended
SELECT id, state, run_id, finished_at, enqueued_at FROM corral_queue
WHERE agent = :agent AND state NOT IN ('queued', 'claimed')
    AND substr(dedupe_key, 1, length(CAST(:prefix AS TEXT))) = :prefix
ORDER BY id DESC
LIMIT :limit;

-- name: run_holds_task
SELECT count(*) AS n FROM corral_tasks WHERE run_id = :run_id AND status = 'claimed';

-- name: run_finished_task
SELECT count(*) AS n FROM corral_tasks
WHERE run_id = :run_id AND run_id IS NOT NULL AND status IN ('done', 'failed');

-- name: take_fleet_scaler_lease
-- Take or renew the lease of the one scheduler that sizes the runner fleet (0027).
INSERT INTO corral_fleet_scaler (id, owner, lease_until) VALUES ('fleet', :owner, :until)
ON CONFLICT (id) DO UPDATE SET owner = :owner, lease_until = :until
WHERE corral_fleet_scaler.owner IS NULL OR corral_fleet_scaler.owner = :owner
   OR corral_fleet_scaler.lease_until < :now
RETURNING owner

-- name: release_fleet_scaler_lease
UPDATE corral_fleet_scaler SET owner = NULL, lease_until = NULL WHERE owner = :owner

-- name: fleet_scaler_lease
SELECT owner, lease_until FROM corral_fleet_scaler WHERE id = 'fleet'

-- name: fleet_queued_by_agent
-- The agents with items waiting, with what decides whether a run of theirs may start now
-- (the fleet autoscaler keeps those of agents its runners run).
SELECT a.agent, a.scale, a.queue_size, a.paused, a.enabled, a.present, a.daily_cost_cap,
       a.queued + a.requeued AS queued, a.running AS active
FROM corral_agents a
WHERE a.queued + a.requeued > 0
ORDER BY a.agent

-- name: fleet_busy_by_runner
-- Live runs per runner and agent: a runner's busy slots, and whose. The IN is the partial
-- index corral_runs_live's own condition, word for word (as live_runs_by_runner_and_bundle).
SELECT runner_id, agent, count(*) AS n FROM corral_runs
WHERE state IN ('queued', 'starting', 'running') AND state <> 'queued'
  AND runner_id IS NOT NULL
GROUP BY runner_id, agent

-- name: insert_fleet_member
INSERT INTO corral_fleet_members
    (name, provider, host, handle, token_id, runner_id, state, started_at, ended_at, detail)
VALUES (:name, :provider, :host, NULL, :token_id, NULL, 'starting', :now, NULL, NULL)

-- name: update_fleet_member
UPDATE corral_fleet_members
SET state = :state, handle = COALESCE(:handle, handle), runner_id = COALESCE(:runner_id, runner_id),
    ended_at = :ended_at, detail = COALESCE(:detail, detail)
WHERE name = :name

-- name: list_fleet_members
SELECT * FROM corral_fleet_members ORDER BY started_at, name

-- name: prune_fleet_members
-- Runners the fleet autoscaler started that ended (stopped or failed) before :older_than.
DELETE FROM corral_fleet_members
WHERE state IN ('stopped', 'failed') AND ended_at < :older_than

-- rollouts ------------------------------------------------------------------------------

-- name: insert_rollout
INSERT INTO corral_rollouts (baseline, candidate, agents, share, rule, state, created_at,
                             created_by)
VALUES (:baseline, :candidate, :agents, :share, :rule, 'running', :now, :actor)
RETURNING *

-- name: running_rollout
SELECT * FROM corral_rollouts WHERE state = 'running'

-- name: get_rollout
SELECT * FROM corral_rollouts WHERE id = :id

-- name: list_rollouts
SELECT * FROM corral_rollouts ORDER BY id DESC LIMIT :limit

-- name: end_rollout
-- One statement decides: of two evaluators (or an operator and an evaluator) ending the
-- same rollout, one finds it running and ends it; the other gets no row.
UPDATE corral_rollouts
SET state = :state, ended_at = :now, ended_by = :actor, reason = :reason
WHERE id = :id AND state = 'running'
RETURNING *

-- name: rollout_runs
-- The runs of a rollout's two bundles since it began (the caller keeps its agents').
SELECT id, agent, bundle, state, created_at, started_at, ended_at, input_tokens,
       output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, status_text,
       return_value, runner_id
FROM corral_runs
WHERE created_at >= :since AND bundle IN (:baseline, :candidate)

-- name: anomalies_since
SELECT kind, subject, evidence FROM corral_anomalies WHERE at >= :since

-- name: insert_fleet_rollout
INSERT INTO corral_fleet_rollouts
    (id, target, channel, canary, batch_share, watch_seconds, source, state, revision,
     detail, created_by, created_at, updated_at)
VALUES (:id, :target, :channel, :canary, :batch_share, :watch_seconds, :source, :state, 1,
     :detail, :created_by, :now, :now)
-- Another rollout running (one started meanwhile by another process) answers no row.
ON CONFLICT (state) WHERE state = 'running' DO NOTHING
RETURNING id

-- name: latest_fleet_rollout
SELECT * FROM corral_fleet_rollouts ORDER BY created_at DESC, id DESC LIMIT 1

-- name: get_fleet_rollout
SELECT * FROM corral_fleet_rollouts WHERE id = :id

-- name: update_fleet_rollout
UPDATE corral_fleet_rollouts
SET state = :state, detail = :detail, revision = revision + 1, updated_at = :now
WHERE id = :id AND revision = :revision
RETURNING *

-- name: runs_ended_by_runner_since
-- The comparison of a rollout step: per runner, runs ended since :since, those that
-- failed, and their summed duration in seconds (computed by the caller from the rows).
SELECT runner_id, state, started_at, ended_at
FROM corral_runs
WHERE ended_at >= :since AND ended_at IS NOT NULL AND runner_id IS NOT NULL

-- name: ensure_provider_bucket
-- A (provider, key)'s bucket (0026), full when first used.
INSERT INTO corral_provider_buckets (bucket, provider, requests, tokens, refilled_at)
VALUES (:bucket, :provider, :requests, :tokens, :now)
ON CONFLICT (bucket) DO NOTHING

-- name: update_provider_bucket
UPDATE corral_provider_buckets
SET requests = :requests, tokens = :tokens, refilled_at = :refilled_at,
    throttled_until = :throttled_until, last_throttle_at = :last_throttle_at,
    available_since = :available_since,
    factor = :factor, granted = :granted, throttles = :throttles
WHERE bucket = :bucket

-- name: prune_provider_waiters
-- Waiters that stopped asking (their run ended or its process died) lose their place.
DELETE FROM corral_provider_waiters WHERE bucket = :bucket AND seen_at < :stale

-- name: upsert_provider_waiter
INSERT INTO corral_provider_waiters (bucket, waiter, agent, since, seen_at)
VALUES (:bucket, :waiter, :agent, :now, :now)
ON CONFLICT (bucket, waiter) DO UPDATE SET seen_at = excluded.seen_at

-- name: list_provider_waiters
-- The runs waiting for a permit of a bucket, with when their agent was last served.
SELECT w.waiter, w.agent, w.since, w.seen_at, s.last_granted_at
FROM corral_provider_waiters w
LEFT JOIN corral_provider_shares s ON s.bucket = w.bucket AND s.agent = w.agent
WHERE w.bucket = :bucket

-- name: delete_provider_waiter
DELETE FROM corral_provider_waiters WHERE bucket = :bucket AND waiter = :waiter

-- name: record_provider_share
INSERT INTO corral_provider_shares (bucket, agent, last_granted_at, granted)
VALUES (:bucket, :agent, :now, 1)
ON CONFLICT (bucket, agent) DO UPDATE
SET last_granted_at = excluded.last_granted_at,
    granted = corral_provider_shares.granted + 1

-- name: list_provider_buckets
-- Every bucket with how many runs wait for it now and the latest ask not granted
-- (what the autoscaler reads).
SELECT b.*,
       (SELECT count(*) FROM corral_provider_waiters w
        WHERE w.bucket = b.bucket AND w.seen_at >= :live) AS waiting,
       (SELECT max(w.seen_at) FROM corral_provider_waiters w
        WHERE w.bucket = b.bucket) AS asked_at
FROM corral_provider_buckets b
ORDER BY b.bucket

-- name: list_provider_shares
SELECT * FROM corral_provider_shares WHERE bucket = :bucket ORDER BY agent
