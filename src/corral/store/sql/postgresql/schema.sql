-- The schema of a fresh install: every numbered migration folded in.
-- When adding migration NNNN, change this file to match; tests/store/test_migrations.py
-- checks that applying every migration from empty gives this same schema.
-- Tables are created unqualified, in the first schema of the search_path.

CREATE TABLE corral_runs (
    id text PRIMARY KEY,
    agent text NOT NULL,
    trigger_kind text NOT NULL
        CHECK (trigger_kind IN ('schedule', 'manual', 'webhook', 'call')),
    trigger_detail jsonb,
    prompt text,
    state text NOT NULL
        CHECK (state IN ('queued', 'starting', 'running',
                         'succeeded', 'failed', 'timed_out', 'killed', 'lost')),
    parent_run_id text REFERENCES corral_runs (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    ended_at timestamptz,
    exit_code integer,
    error text,
    pid integer,
    host text,
    status_text text
);

CREATE INDEX corral_runs_agent_created ON corral_runs (agent, created_at);

CREATE INDEX corral_runs_live ON corral_runs (state)
    WHERE state IN ('queued', 'starting', 'running');

CREATE INDEX corral_runs_ended ON corral_runs (ended_at)
    WHERE ended_at IS NOT NULL;

CREATE INDEX corral_runs_parent ON corral_runs (parent_run_id)
    WHERE parent_run_id IS NOT NULL;
