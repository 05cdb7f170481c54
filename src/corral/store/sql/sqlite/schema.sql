-- The schema of a fresh install: every numbered migration folded in.
-- When adding migration NNNN, change this file to match; tests/store/test_migrations.py
-- checks that applying every migration from empty gives this same schema.
-- Timestamps are ISO-8601 TEXT in UTC with microseconds ("2024-05-01T12:00:00.000000+00:00"):
-- fixed width, so text order is time order. JSON columns hold json.dumps() text.

CREATE TABLE corral_runs (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    trigger_kind TEXT NOT NULL
        CHECK (trigger_kind IN ('schedule', 'manual', 'webhook', 'call')),
    trigger_detail TEXT,
    prompt TEXT,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'starting', 'running',
                         'succeeded', 'failed', 'timed_out', 'killed', 'lost')),
    parent_run_id TEXT REFERENCES corral_runs (id) ON DELETE SET NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    exit_code INTEGER,
    error TEXT,
    pid INTEGER,
    host TEXT,
    status_text TEXT
);

CREATE INDEX corral_runs_agent_created ON corral_runs (agent, created_at);

CREATE INDEX corral_runs_live ON corral_runs (state)
    WHERE state IN ('queued', 'starting', 'running');

CREATE INDEX corral_runs_ended ON corral_runs (ended_at)
    WHERE ended_at IS NOT NULL;

CREATE INDEX corral_runs_parent ON corral_runs (parent_run_id)
    WHERE parent_run_id IS NOT NULL;
