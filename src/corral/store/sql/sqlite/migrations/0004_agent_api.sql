-- 0004 agent API: what the gateway's agent API needs from the store.
-- corral_runs gains the hash of the run's secret (the secret itself is never stored),
-- the value the run returned with al-return, when its status text was last set, and the
-- exit code it asked for with al-exit.
-- corral_calls holds agent-to-agent calls; corral_lock_waits the runs blocked in
-- `rlock --wait` (the lock half of the wait-for graph); corral_audit operators' actions.

ALTER TABLE corral_runs ADD COLUMN secret_hash TEXT;
ALTER TABLE corral_runs ADD COLUMN status_at TEXT;
ALTER TABLE corral_runs ADD COLUMN return_value TEXT;
ALTER TABLE corral_runs ADD COLUMN exit_requested INTEGER;

CREATE UNIQUE INDEX corral_runs_secret ON corral_runs (secret_hash)
    WHERE secret_hash IS NOT NULL;

CREATE TABLE corral_calls (
    id TEXT PRIMARY KEY,
    caller_run_id TEXT NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    caller_agent TEXT NOT NULL,
    target_agent TEXT NOT NULL,
    depth INTEGER NOT NULL CHECK (depth >= 1),
    context TEXT NOT NULL,
    item_id INTEGER REFERENCES corral_queue (id) ON DELETE SET NULL,
    callee_run_id TEXT REFERENCES corral_runs (id) ON DELETE SET NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'completed', 'error')),
    return_value TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    ended_at TEXT,
    waiting_since TEXT
);

CREATE INDEX corral_calls_caller ON corral_calls (caller_run_id);

CREATE INDEX corral_calls_item ON corral_calls (item_id) WHERE item_id IS NOT NULL;

CREATE INDEX corral_calls_callee ON corral_calls (callee_run_id)
    WHERE callee_run_id IS NOT NULL;

-- AUTOINCREMENT: id order is arrival order, the order waiters are served in.
CREATE TABLE corral_lock_waits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES corral_runs (id) ON DELETE CASCADE,
    since TEXT NOT NULL,
    deadline TEXT NOT NULL,
    ttl_seconds REAL NOT NULL CHECK (ttl_seconds > 0),
    UNIQUE (run_id, key)
);

CREATE INDEX corral_lock_waits_key ON corral_lock_waits (key, id);

CREATE TABLE corral_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT
);

CREATE INDEX corral_audit_at ON corral_audit (at);
