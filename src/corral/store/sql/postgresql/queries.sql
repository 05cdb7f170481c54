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

-- name: set_run_status
UPDATE corral_runs SET status_text = %(status_text)s WHERE id = %(id)s

-- name: list_runs
SELECT * FROM corral_runs
WHERE state = ANY(%(states)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: list_agent_runs
SELECT * FROM corral_runs
WHERE agent = %(agent)s AND state = ANY(%(states)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: count_runs
SELECT count(*) AS n FROM corral_runs

-- name: count_agent_runs
SELECT count(*) AS n FROM corral_runs WHERE agent = %(agent)s

-- name: prune_runs
DELETE FROM corral_runs WHERE ended_at IS NOT NULL AND ended_at < %(older_than)s
