-- Named queries for SQLite. Each block starts with "-- name: <name>"; parameters are :name.
-- Timestamps arrive already encoded (ISO-8601 UTC text); JSON arrives as text.

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

-- name: applied_migrations
SELECT version, name, applied_at FROM corral_migrations ORDER BY version

-- name: record_migration
INSERT INTO corral_migrations (version, name, applied_at) VALUES (:version, :name, :applied_at)

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

-- name: set_run_status
UPDATE corral_runs SET status_text = :status_text WHERE id = :id

-- name: list_runs
SELECT * FROM corral_runs
WHERE state IN (SELECT value FROM json_each(:states))
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: list_agent_runs
SELECT * FROM corral_runs
WHERE agent = :agent AND state IN (SELECT value FROM json_each(:states))
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: count_runs
SELECT count(*) AS n FROM corral_runs

-- name: count_agent_runs
SELECT count(*) AS n FROM corral_runs WHERE agent = :agent

-- name: prune_runs
DELETE FROM corral_runs WHERE ended_at IS NOT NULL AND ended_at < :older_than
